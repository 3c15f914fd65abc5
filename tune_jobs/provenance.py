"""A launch's provenance: :func:`record.provenance.context_tags` for ``python -m tune_jobs STUDY FLAGS``."""

from __future__ import annotations

import functools
import importlib
import os
import shlex
import sys
from pathlib import Path

from record import schema
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
    tags = context_tags(f"python -m tune_jobs {shown}", command(shown, list(argv)),
                        Path(module.__file__).resolve().parent)
    return tags | rerun_tags(study_ref, argv)


def rerun_tags(study_ref: str, argv: tuple[str, ...]) -> dict[str, str]:
    """What running the launch again needs (this interpreter, this folder, the study's import root) and the line
    that does it from any folder: ``cd DIR && PYTHONPATH=ROOT PYTHON -m tune_jobs STUDY FLAGS``."""
    top = importlib.import_module(study_ref.partition(":")[0].partition(".")[0])
    root = Path(top.__file__).resolve().parent.parent if top.__file__ else Path.cwd()
    installed = "site-packages" in root.parts or "dist-packages" in root.parts
    path = [] if installed else [str(root)]
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in path]
    env = f"PYTHONPATH={shlex.quote(os.pathsep.join(path))} " if path else ""
    cwd = os.getcwd()
    line = (f"cd {shlex.quote(cwd)} && {env}"
            + shlex.join([sys.executable, "-m", "tune_jobs", shown_ref(study_ref), *argv]))
    return {schema.TAG_RERUN: line[:4000], schema.TAG_CWD: cwd, schema.TAG_PYTHON: sys.executable,
            schema.TAG_IMPORT_ROOT: str(root)}


def shown_ref(study_ref: str) -> str:
    """How a user names the study on the command line (``robust_loss``, ``my_pkg.study``)."""
    from tune_jobs.study import BUILTIN_PACKAGE

    return study_ref.removesuffix(":STUDY").removeprefix(f"{BUILTIN_PACKAGE}.")
