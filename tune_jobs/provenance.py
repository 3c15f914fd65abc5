"""A launch's provenance: :func:`record.provenance.context_tags` for ``python -m tune_jobs STUDY FLAGS``."""

from __future__ import annotations

import functools
import importlib
import shlex
from pathlib import Path

from record.provenance import context_tags


def command(study_ref: str, argv: list[str]) -> str:
    """The launch as a command to run again (``python -m tune_jobs STUDY FLAGS``, quoted for a POSIX shell)."""
    return shlex.join(["python", "-m", "tune_jobs", study_ref, *argv])


@functools.lru_cache(maxsize=None)
def provenance_tags(study_ref: str, argv: tuple[str, ...]) -> dict[str, str]:
    """The launch's context tags (computed once per launch); the git commit is that of the repository holding
    the study's code (the user's own, for a study of their own)."""
    module = importlib.import_module(study_ref.partition(":")[0])
    shown = shown_ref(study_ref)
    return context_tags(f"python -m tune_jobs {shown}", command(shown, list(argv)),
                        Path(module.__file__).resolve().parent)


def shown_ref(study_ref: str) -> str:
    """How a user names the study on the command line (``robust_loss``, ``my_pkg.study``)."""
    from tune_jobs.study import BUILTIN_PACKAGE

    return study_ref.removesuffix(":STUDY").removeprefix(f"{BUILTIN_PACKAGE}.")
