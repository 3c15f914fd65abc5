"""Experiments and the run queries every reader and writer shares (on a client the caller made)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from record.schema import (EXPERIMENT_KIND_TRAINING, KIND_SWEEP, POINT_FILTER, TAG_EXPERIMENT_KIND, TAG_KIND,
                           TAG_POINT, TAG_RAY_TRIAL, TAG_STUDY, TAG_SWEEP)
from record.store import artifact_root

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store, keep artifacts beside the database (``<artifact_root>/<experiment>``)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (artifact_root(db) / experiment).resolve().as_uri()
    return None


#: What MLflow's table creation says when another process creates or migrates the same new store at that moment.
_CREATION_RACE = ("already exists", "out-of-date database schema", "database is locked", "no such table",
                  "no such column", "duplicate column", "No such index", "alembic", "Online migration expected")


def open_client(tracking_uri: str, wait_s: float = 60.0) -> MlflowClient:
    """An MLflow client on ``tracking_uri``, its store's tables created (MLflow creates them on first open).

    Another process (a plain ``mlflow.search_runs`` included) may create or migrate a new SQLite store at the same
    moment; MLflow's migrations then fail in one of the two ("table ... already exists"): this one waits for the
    other and opens the store again, for up to ``wait_s``. A disk that fills up meanwhile is a
    :class:`record.store.StoreError` naming the store.
    """
    import time

    from mlflow.tracking import MlflowClient

    from record.store import StoreError, sqlite_path

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return MlflowClient(tracking_uri)
        except Exception as error:  # noqa: BLE001 - MLflow's and SQLAlchemy's errors alike; re-raised unless a race
            db, text = sqlite_path(tracking_uri), str(error)
            if db is None:
                raise
            if "database or disk is full" in text or "No space left on device" in text:
                raise StoreError(f"the tracking store {db} cannot be created: the disk is full "
                                 "(database or disk is full); free space, or pass another --tracking-uri") from None
            # mid-migration, SQLAlchemy may also miss a column of a table another process is still altering
            raced = isinstance(error, (AttributeError, KeyError)) or any(sign in text for sign in _CREATION_RACE)
            if time.monotonic() > deadline or not raced:
                raise
            time.sleep(0.5)


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (with artifacts beside a SQLite store) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"experiment {name!r} is deleted in {tracking_uri}; restore it or pick another name")
        return experiment.experiment_id
    try:
        # Declared training work: MLflow's UI routes such an experiment to its runs, not to its GenAI overview
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri, name),
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (objects still go by reference counting).

    A page of 1,000 runs is ~40,000 new SQLAlchemy objects; each collection the allocations trigger walks every
    object alive, the runs read so far included (benchmarks/scale.py measures the analysis of a large sweep).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def iter_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> Iterator:
    """Every run matching the filter, newest first, read 1,000 at a time (Python's cyclic GC paused while MLflow
    builds each page: :func:`cyclic_gc_paused`)."""
    token = None
    while True:
        with cyclic_gc_paused():
            page = client.search_runs(experiment_ids, filter_string, max_results=1000,
                                      order_by=["attribute.start_time DESC"], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    """Every run matching the filter (all pages), newest first."""
    return list(iter_runs(client, experiment_ids, filter_string))


def sweep_runs(client: MlflowClient, experiment_id: str, study: str | None = None) -> list:
    """The sweeps (parent runs) of an experiment, of one study if given, newest first."""
    query = f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'"
    if study is not None:
        query += f" and tags.`{TAG_STUDY}` = '{study}'"
    return search_all_runs(client, [experiment_id], query)


def point_runs(client: MlflowClient, experiment_id: str, sweep_id: str, ray_trial: str | None = None,
               status: str | None = None) -> list:
    """A sweep's point runs (those one Ray trial computed, those with ``status``, if given), newest first."""
    return search_all_runs(client, [experiment_id], _point_query(sweep_id, ray_trial, status))


def has_finished_point(client: MlflowClient, experiment_id: str, sweep_id: str) -> bool:
    """Whether a sweep has at least one FINISHED point run (one run read, at most)."""
    return bool(client.search_runs([experiment_id], _point_query(sweep_id, status="FINISHED"), max_results=1))


def point_statuses(client: MlflowClient, experiment_id: str, sweep_id: str) -> dict[str, set[str]]:
    """Each point of a sweep with the statuses of its runs, read page by page (memory stays flat at any size)."""
    found: dict[str, set[str]] = {}
    for run in iter_runs(client, [experiment_id], _point_query(sweep_id)):
        found.setdefault(run.data.tags.get(TAG_POINT), set()).add(run.info.status)
    return found


def _point_query(sweep_id: str, ray_trial: str | None = None, status: str | None = None) -> str:
    query = f"tags.`{TAG_SWEEP}` = '{sweep_id}' and {POINT_FILTER}"
    if ray_trial is not None:
        query += f" and tags.`{TAG_RAY_TRIAL}` = '{ray_trial}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    return query


#: The runs-table filter of the printed link: the sweeps only (a sweep's points and analysis run are one filter away,
#: ``tags.`robustlab.sweep_id` = '<sweep id>'``).
SWEEPS_FILTER = f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'"


def ui_link(tracking_uri: str, experiment_id: str) -> str:
    """Where the experiment's sweeps open in the MLflow UI, every one at once, with the command that serves the UI
    for a SQLite store.

    The link's ``workflowType`` picks the runs table over the GenAI overview; its ``searchFilter`` (the runs
    page's search box, read from the URL by MLflow's UI) shows the sweeps only: the UI pages 100 runs and nested
    points count toward the page, so unfiltered a few sweeps fill it.
    """
    from urllib.parse import quote

    path = (f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={quote(SWEEPS_FILTER, safe='')}")
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path} (after: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1)"
