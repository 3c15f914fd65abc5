"""MLflow conventions of robustlab: where runs go, how they are tagged, how a result is logged.

Run layout (see README, "Tracking schema"):

* one parent run per sweep launch: tags ``robustlab.kind=sweep``,
  ``robustlab.study``, ``robustlab.sweep_id`` (= its own run id); params are the
  fixed protocol values and ``grid.<dim>`` lists;
* one child run per grid point (``mlflow.parentRunId`` = the sweep):
  ``robustlab.kind=trial``, ``robustlab.point`` (``dim=value ...``); flat params;
  final metrics at step 0 and histories with ``step`` = epoch (or the index the
  study documents);
* analysis runs nested under the sweep: ``robustlab.kind=analysis``.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from core.trial import TrialResult

TAG_STUDY = "robustlab.study"
TAG_KIND = "robustlab.kind"
TAG_SWEEP = "robustlab.sweep_id"
TAG_POINT = "robustlab.point"
TAG_ERROR = "robustlab.error"
TAG_NODE = "robustlab.node"
TAG_RAY_TRIAL = "robustlab.ray_trial"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store, keep artifacts beside the database (``<db dir>/artifacts/<experiment>``)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "artifacts" / experiment).resolve().as_uri()
    return None


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (with artifacts beside a SQLite store) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"experiment {name!r} is deleted in {tracking_uri}; restore it or pick another name")
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri, name))
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def log_flat(client: MlflowClient, run_id: str, params: Mapping[str, Any] = (), metrics: Iterable[Metric] = (),
             tags: Mapping[str, str] = ()) -> None:
    """Log params, metrics and tags in as few ``log_batch`` calls as MLflow's limits allow."""
    param_list = [Param(k, str(v)) for k, v in dict(params).items()]
    metric_list = list(metrics)
    tag_list = [RunTag(k, str(v)) for k, v in dict(tags).items()]
    while param_list or metric_list or tag_list:
        chunk_params, param_list = param_list[:_MAX_PARAMS_PER_BATCH], param_list[_MAX_PARAMS_PER_BATCH:]
        room = _MAX_METRICS_PER_BATCH - len(chunk_params)
        chunk_metrics, metric_list = metric_list[:room], metric_list[room:]
        client.log_batch(run_id, metrics=chunk_metrics, params=chunk_params, tags=tag_list)
        tag_list = []


def result_metrics(result: TrialResult, logged: Mapping[str, float] | None = None) -> list[Metric]:
    """Final metrics at step 0 plus every history point at its step; non-finite values are dropped.

    A final metric that is also a history (``test_acc`` measured every epoch)
    is carried by the history's last point, not logged again at step 0.
    ``logged`` holds the last values a long trial already logged epoch by
    epoch: then histories are not logged again, nor finals equal to them.
    """
    now = int(time.time() * 1000)
    last = dict(logged) if logged is not None else {k: v[-1] for k, v in result.histories.items() if v}
    metrics = [Metric(k, float(v), now, 0) for k, v in result.metrics.items() if math.isfinite(v) and last.get(k) != v]
    if logged is None:
        for name, series in result.histories.items():
            metrics += [Metric(name, float(v), now, step) for step, v in enumerate(series) if math.isfinite(v)]
    return metrics


def log_artifacts(client: MlflowClient, run_id: str, artifacts: Mapping[str, Any]) -> None:
    """Write each artifact: text/bytes as is, anything else as JSON."""
    for name, content in artifacts.items():
        if isinstance(content, bytes):
            content = content.decode()
        if not isinstance(content, str):
            content = json.dumps(content, indent=1, sort_keys=True)
        client.log_text(run_id, content, name)


def node_address() -> str:
    """The Ray node this process runs on (its IP address), or the host name outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    import socket

    return socket.gethostname()


class SweepTracker:
    """The child runs of one sweep, as seen from a worker: create, finish, fail, find."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str, study: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self.study = study

    def point_runs(self, point: str | None = None, ray_trial: str | None = None) -> list:
        """Child runs of this sweep (of one point, or computed by one Ray trial, if given), newest first."""
        query = f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and tags.`{TAG_KIND}` = 'trial'"
        if point is not None:
            query += f" and tags.`{TAG_POINT}` = '{point}'"
        if ray_trial is not None:
            query += f" and tags.`{TAG_RAY_TRIAL}` = '{ray_trial}'"
        return search_all_runs(self.client, [self.experiment_id], query)

    def runs_by_point(self, ray_trial: str) -> dict[str, list]:
        """The runs one Ray trial's earlier attempts left (a retry's, a restore's), by point: one search."""
        found: dict[str, list] = {}
        for run in self.point_runs(ray_trial=ray_trial):
            found.setdefault(run.data.tags.get(TAG_POINT), []).append(run)
        return found

    def point_outcomes(self) -> tuple[set[str], set[str]]:
        """Points with a FINISHED child run, and points whose runs FAILED with none finished."""
        return self._outcomes(self.point_runs())

    def take_over(self) -> set[str]:
        """For ``--resume``: mark the children a dead launch left RUNNING KILLED; returns the finished points."""
        runs = self.point_runs()
        for run in runs:
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        return self._outcomes(runs)[0]

    @staticmethod
    def _outcomes(runs: list) -> tuple[set[str], set[str]]:
        finished = {r.data.tags.get(TAG_POINT) for r in runs if r.info.status == "FINISHED"}
        return finished, {r.data.tags.get(TAG_POINT) for r in runs if r.info.status == "FAILED"} - finished

    def close(self, n_points: int, n_finished: int, interrupted: bool) -> None:
        """End the parent run: FINISHED when every point finished, KILLED when interrupted, else FAILED."""
        self.client.set_terminated(self.sweep_id, terminal_status(n_points, n_finished, interrupted))

    def start(self, point: str, params: Mapping[str, Any], ray_trial: str, earlier: Iterable = (),
              resume_run_id: str | None = None) -> str:
        """A RUNNING child run for ``point``; ``earlier`` attempts left RUNNING are marked KILLED.

        With ``resume_run_id`` (from a checkpoint) that run is continued instead.
        """
        for run in earlier:
            if run.info.status == "RUNNING" and run.info.run_id != resume_run_id:
                self.client.set_terminated(run.info.run_id, "KILLED")
        if resume_run_id is not None:  # a retried or resumed attempt continues its run
            self.client.update_run(resume_run_id, status="RUNNING")
            if TAG_ERROR in self.client.get_run(resume_run_id).data.tags:
                self.client.delete_tag(resume_run_id, TAG_ERROR)
            return resume_run_id
        tags = {TAG_PARENT: self.sweep_id, TAG_SWEEP: self.sweep_id, TAG_STUDY: self.study, TAG_KIND: "trial",
                TAG_POINT: point, TAG_NODE: node_address(), TAG_RAY_TRIAL: ray_trial}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=point.replace(" ", ","))
        log_flat(self.client, run.info.run_id, params=params)
        return run.info.run_id

    def finish(self, run_id: str, result: TrialResult, logged: Mapping[str, float] | None = None) -> None:
        """Log the result in batches and mark the run FINISHED (``logged``: see :func:`result_metrics`)."""
        log_flat(self.client, run_id, params=result.params, metrics=result_metrics(result, logged))
        log_artifacts(self.client, run_id, result.artifacts)
        self.client.set_terminated(run_id, "FINISHED")

    def log_step(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """One ``log_batch`` of this step's values (a long trial's per-epoch progress)."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                               if math.isfinite(v)])

    def fail(self, run_id: str, error: BaseException) -> None:
        """Mark the run FAILED with the message as a tag and the traceback as an artifact."""
        message = f"{type(error).__name__}: {error}"[:4000]
        self.client.set_tag(run_id, TAG_ERROR, message)
        self.client.log_text(run_id, "".join(traceback.format_exception(error)), "error/traceback.txt")
        self.client.set_terminated(run_id, "FAILED")


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    """Every run matching the filter (all pages), newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, order_by=["attribute.start_time DESC"],
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def terminal_status(n_points: int, n_finished: int, interrupted: bool) -> str:
    """The parent run's final status."""
    if interrupted:
        return RunStatus.to_string(RunStatus.KILLED)
    return "FINISHED" if n_finished == n_points else "FAILED"
