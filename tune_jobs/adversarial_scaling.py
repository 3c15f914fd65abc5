"""``python -m tune_jobs.adversarial_scaling``: the built-in study, the same as ``python -m tune_jobs adversarial_scaling``."""

from tune_jobs.studies.adversarial_scaling import STUDY  # noqa: F401  (the declaration, for code that imports it from here)

if __name__ == "__main__":
    from tune_jobs.cli import exit_process
    from tune_jobs.runner import main

    exit_process(main("adversarial_scaling"))
