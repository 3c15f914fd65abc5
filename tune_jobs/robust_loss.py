"""``python -m tune_jobs.robust_loss``: the built-in study, the same as ``python -m tune_jobs robust_loss``."""

from tune_jobs.studies.robust_loss import STUDY  # noqa: F401  (the declaration, for code that imports it from here)

if __name__ == "__main__":
    from tune_jobs.cli import exit_process
    from tune_jobs.runner import main

    exit_process(main("robust_loss"))
