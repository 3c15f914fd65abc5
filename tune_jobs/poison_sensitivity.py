"""``python -m tune_jobs.poison_sensitivity``: the built-in study, the same as ``python -m tune_jobs poison_sensitivity``."""

from tune_jobs.studies.poison_sensitivity import STUDY  # noqa: F401  (the declaration, for code that imports it from here)

if __name__ == "__main__":
    from tune_jobs.cli import exit_process
    from tune_jobs.runner import main

    exit_process(main("poison_sensitivity"))
