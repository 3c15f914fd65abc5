"""Where a run came from: the command to run it again, the code's git commit, the user, the library versions.

Computed once by the launcher and written on the sweep's parent and on every point's run (workers on other nodes
get it with the Ray trial: they may have no git checkout).
"""

from __future__ import annotations

import functools
import getpass
import importlib
import json
import platform
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

from record import schema


def git_state(folder: Path) -> tuple[str, bool] | None:
    """The commit checked out in the git work tree holding ``folder``, and whether it has changes; None outside
    git (or without a git command)."""
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip(), bool(status.stdout.strip())


def versions() -> dict[str, str]:
    """Python and the versions of the libraries a result depends on."""
    found = {"python": platform.python_version()}
    for name in ("robustlab", "torch", "ray", "mlflow", "numpy", "scipy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def command(study_ref: str, argv: list[str]) -> str:
    """The launch as a command to run again (``python -m tune_jobs STUDY FLAGS``, quoted for a POSIX shell)."""
    return shlex.join(["python", "-m", "tune_jobs", study_ref, *argv])


@functools.lru_cache(maxsize=None)
def provenance_tags(study_ref: str, argv: tuple[str, ...]) -> dict[str, str]:
    """MLflow's own context tags (source, git commit, user), as its fluent API sets them, and robustlab's
    (computed once per launch)."""
    module = importlib.import_module(study_ref.partition(":")[0])
    shown = shown_ref(study_ref)
    tags = {schema.TAG_COMMAND: command(shown, list(argv))[:4000], schema.TAG_SOURCE_NAME: f"python -m tune_jobs {shown}",
            schema.TAG_SOURCE_TYPE: "LOCAL", schema.TAG_USER: getpass.getuser(),
            schema.TAG_VERSIONS: json.dumps(versions(), sort_keys=True), schema.TAG_HOST: platform.node()}
    state = git_state(Path(module.__file__).resolve().parent)
    if state is not None:  # the repository of the study's code (the user's own, for a study of their own)
        tags[schema.TAG_GIT_COMMIT], dirty = state
        tags[schema.TAG_GIT_DIRTY] = str(dirty).lower()
    own = git_state(Path(__file__).resolve().parent)
    if own is not None:
        tags[schema.TAG_ROBUSTLAB_COMMIT] = own[0] + ("-dirty" if own[1] else "")
    return tags


def shown_ref(study_ref: str) -> str:
    """How a user names the study on the command line (``robust_loss``, ``my_pkg.study``)."""
    from tune_jobs.study import BUILTIN_PACKAGE

    return study_ref.removesuffix(":STUDY").removeprefix(f"{BUILTIN_PACKAGE}.")
