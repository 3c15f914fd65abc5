"""A long point's checkpoints in its own MLflow run: two slots (``checkpoint/a``, ``checkpoint/b``) used in turn, and
the ``robustlab.checkpoint`` tag naming the complete one."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from record import schema


def save_checkpoint(client: MlflowClient, run_id: str, local_file: str, slot: str, epoch: int, node: str) -> None:
    """Upload a point's checkpoint as ``checkpoint/<slot>/<file>`` of its run, then name it in the
    ``robustlab.checkpoint`` tag: alternating two slots, a crash mid-upload never spoils the named one."""
    path = f"{schema.CHECKPOINT_DIR}/{slot}"
    client.log_artifact(run_id, local_file, path)
    note = {"epoch": epoch, "path": f"{path}/{os.path.basename(local_file)}",
            "bytes": os.path.getsize(local_file), "node": node, "time": time.time()}
    client.set_tag(run_id, schema.TAG_CHECKPOINT, json.dumps(note))


def download_checkpoint(client: MlflowClient, run_id: str, note: Mapping[str, Any], folder: str) -> str:
    """Fetch the checkpoint ``note`` (see :func:`checkpoint_note`) names into ``folder``; its local path."""
    if not confined(note.get("path")):
        raise ValueError(f"checkpoint path {note.get('path')!r} is not in run {run_id}'s checkpoint slots")
    return client.download_artifacts(run_id, note["path"], folder)


def drop_checkpoints(client: MlflowClient, run_id: str, keep_latest: bool = False) -> None:
    """A finished point's checkpoints: all deleted with the ``robustlab.checkpoint`` tag, or all but the one
    the tag names (``keep_latest``)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = client.get_run(run_id)
    note = checkpoint_note(run)
    if note is None:
        return
    # MLflow's artifact-repository interface, as `mlflow gc` uses it (the client has no delete call)
    repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    if not keep_latest:
        repository.delete_artifacts(schema.CHECKPOINT_DIR)
        client.delete_tag(run_id, schema.TAG_CHECKPOINT)
        _prune_empty_folders(run.info.artifact_uri)
        return
    latest = note["path"].split("/")[1]
    for entry in client.list_artifacts(run_id, schema.CHECKPOINT_DIR):
        if entry.path != f"{schema.CHECKPOINT_DIR}/{latest}":
            repository.delete_artifacts(entry.path)


def _prune_empty_folders(artifact_uri: str) -> None:
    """MLflow's local artifact repository deletes a folder but not the folders above it left empty: remove the run's
    artifact folder and the run's folder when nothing is left in them (a store behind a server keeps its own)."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return
    folder = Path(urllib.request.url2pathname(parsed.path))
    for empty in (folder, folder.parent):
        try:
            empty.rmdir()  # only an empty folder goes
        except OSError:
            return


#: The artifact paths a checkpoint tag may name: a file directly in one of the run's two slots.
_CHECKPOINT_PATH = re.compile(rf"{re.escape(schema.CHECKPOINT_DIR)}/[ab]/[A-Za-z0-9_][A-Za-z0-9_.-]*")


def confined(path: object) -> bool:
    """Whether ``path`` (read from a tag anyone with access to the store can set) names a file in one of the run's
    own checkpoint slots, ``checkpoint/a/<file>`` or ``checkpoint/b/<file>``: no ``..``, no other folder."""
    return isinstance(path, str) and _CHECKPOINT_PATH.fullmatch(path) is not None and ".." not in path


def checkpoint_note(run, on_ignored: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The ``robustlab.checkpoint`` tag of a point's run (epoch, artifact path, bytes, node), or None.

    A tag that is not such a note, or whose path is not confined to the run's own checkpoint slots (see
    :func:`confined`), is ignored: ``on_ignored`` (if given) is told why, in words naming the run and the tag.
    """
    text = run.data.tags.get(schema.TAG_CHECKPOINT)
    if not text:
        return None
    try:
        note = json.loads(text)
    except ValueError:
        note = None
    valid = isinstance(note, dict) and isinstance(note.get("path"), str) and type(note.get("epoch")) is int
    if valid and confined(note["path"]) and note["epoch"] >= 0:
        return note
    if on_ignored is not None:
        shown = note["path"] if valid else text
        on_ignored(f"run {run.info.run_id}: its {schema.TAG_CHECKPOINT} tag names {shown[:300]!r}, not a checkpoint "
                   f"of that run ({schema.CHECKPOINT_DIR}/a/<file> or {schema.CHECKPOINT_DIR}/b/<file>); ignored")
    return None
