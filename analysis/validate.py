"""``python -m analysis.validate STUDY [--experiment NAME] [--tracking-uri URI] [--sweep-id ID]``: an alias of
``python -m analysis`` that runs a finished sweep's analysis in memory and its checks only (no files, no analysis
run); prints each check and exits 1 if any failed, 2 if there is nothing to validate.  See :mod:`analysis.cli`."""

if __name__ == "__main__":
    from analysis.cli import main
    from analysis.common import exit_process

    exit_process(main(prog="python -m analysis.validate", check_only=True))
