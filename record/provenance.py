"""Where a run came from: the command to run it again, the code's git commit, the user, the library versions.

Computed once by a launch and written on the sweep's parent and on every point's run (workers on other nodes
get it with the Ray trial: they may have no git checkout), and by an analysis on its run.  No Ray or torch import.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
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


def launching_user() -> str:
    """Who launches: the tracking server's user (``$MLFLOW_TRACKING_USERNAME``) where one is set, else the login."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def context_tags(source_name: str, command: str, code: Path) -> dict[str, str]:
    """MLflow's own context tags (source, git commit, user), as its fluent API sets them, and robustlab's:
    ``command`` (to run it again), host, versions, and the git state of the repository holding ``code``
    (``robustlab.code_commit``: this project's own, when ``code`` lies elsewhere)."""
    tags = {schema.TAG_COMMAND: command[:4000], schema.TAG_SOURCE_NAME: source_name,
            schema.TAG_SOURCE_TYPE: "LOCAL", schema.TAG_USER: launching_user(),
            schema.TAG_VERSIONS: json.dumps(versions(), sort_keys=True), schema.TAG_HOST: platform.node()}
    state = git_state(code)
    if state is not None:
        tags[schema.TAG_GIT_COMMIT], dirty = state
        tags[schema.TAG_GIT_DIRTY] = str(dirty).lower()
    own = git_state(Path(__file__).resolve().parent)
    if own is not None:
        tags[schema.TAG_ROBUSTLAB_COMMIT] = own[0] + ("-dirty" if own[1] else "")
    return tags
