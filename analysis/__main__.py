"""``python -m analysis STUDY [flags]``: analyse (and validate) a study's sweep read back from MLflow; see
:mod:`analysis.cli`."""

if __name__ == "__main__":
    from analysis.cli import main
    from analysis.common import exit_process

    exit_process(main())
