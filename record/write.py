"""What launching writes: a sweep's parent run and one run per grid point, in few ``log_batch`` calls."""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from record import schema
from record.runs import point_runs

_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100


class Result(Protocol):
    """What a point produced (``core.point.PointResult`` has this shape)."""

    metrics: dict[str, float]
    histories: dict[str, list[float]]
    params: dict[str, Any]
    artifacts: dict[str, Any]


def log_flat(client: MlflowClient, run_id: str, params: Mapping[str, Any] = (), metrics: Iterable[Metric] = (),
             tags: Mapping[str, Any] = ()) -> None:
    """Log params (encoded), metrics and tags in as few ``log_batch`` calls as MLflow's limits allow."""
    param_list = [Param(k, schema.encode(v)) for k, v in dict(params).items()]
    metric_list = list(metrics)
    tag_list = [RunTag(k, str(v)) for k, v in dict(tags).items()]
    while param_list or metric_list or tag_list:
        chunk_params, param_list = param_list[:_MAX_PARAMS_PER_BATCH], param_list[_MAX_PARAMS_PER_BATCH:]
        room = _MAX_METRICS_PER_BATCH - len(chunk_params)
        chunk_metrics, metric_list = metric_list[:room], metric_list[room:]
        client.log_batch(run_id, metrics=chunk_metrics, params=chunk_params, tags=tag_list)
        tag_list = []


def result_metrics(result: Result, logged: Mapping[str, float] | None = None) -> list[Metric]:
    """Final metrics at step 0 plus every history point at its step; non-finite values are dropped.

    A final metric that is also a history (``test_acc`` measured every epoch)
    is carried by the history's last point, not logged again at step 0.
    ``logged`` holds the last values a long point already logged epoch by
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


def create_sweep(client: MlflowClient, experiment_id: str, *, study: str, run_name: str, command: str,
                 fixed: Mapping[str, Any], grid: Mapping[str, Iterable[Any]], n_points: int,
                 param_types: Mapping[str, str]) -> str:
    """A new sweep's parent run (RUNNING): fixed values and ``grid.<dim>`` lists as params; returns its id."""
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_STUDY: study,
                                  schema.TAG_COMMAND: command[:4000]})
    sweep_id = run.info.run_id
    params = dict(fixed)
    params.update({f"{schema.GRID_PREFIX}{d}": tuple(v) for d, v in grid.items()})
    log_flat(client, sweep_id, params=params,
             tags={schema.TAG_SWEEP: sweep_id, schema.TAG_N_POINTS: n_points,
                   schema.TAG_PARAM_TYPES: schema.encode_types(param_types)})
    return sweep_id


def terminal_status(n_points: int, n_finished: int, interrupted: bool) -> str:
    """The parent run's final status: KILLED when interrupted, FINISHED when every point finished, else FAILED."""
    if interrupted:
        return RunStatus.to_string(RunStatus.KILLED)
    return "FINISHED" if n_finished == n_points else "FAILED"


def node_address() -> str:
    """The Ray node this process runs on (its IP address) when inside Ray, else the host name.

    Ray is not imported here: only a process that already runs it is asked.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.util.get_node_ip_address()
    import socket

    return socket.gethostname()


class SweepWriter:
    """One sweep's runs as launching writes them: the parent's end, and each point's run from start to end."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str, study: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self.study = study

    def runs_by_point(self, ray_trial: str) -> dict[str, list]:
        """The runs one Ray trial's earlier attempts left (a retry's, a restore's), by point: one search."""
        found: dict[str, list] = {}
        for run in point_runs(self.client, self.experiment_id, self.sweep_id, ray_trial=ray_trial):
            found.setdefault(run.data.tags.get(schema.TAG_POINT), []).append(run)
        return found

    def point_outcomes(self) -> tuple[set[str], set[str]]:
        """Points with a FINISHED run, and points whose runs FAILED with none finished."""
        return self._outcomes(point_runs(self.client, self.experiment_id, self.sweep_id))

    def take_over(self) -> set[str]:
        """For ``--resume``: mark the runs a dead launch left RUNNING KILLED; returns the finished points."""
        runs = point_runs(self.client, self.experiment_id, self.sweep_id)
        for run in runs:
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        return self._outcomes(runs)[0]

    @staticmethod
    def _outcomes(runs: list) -> tuple[set[str], set[str]]:
        finished = {r.data.tags.get(schema.TAG_POINT) for r in runs if r.info.status == "FINISHED"}
        return finished, {r.data.tags.get(schema.TAG_POINT) for r in runs if r.info.status == "FAILED"} - finished

    def ray_experiment(self) -> str | None:
        """The Ray Tune experiment folder recorded on the parent run, if any."""
        return self.client.get_run(self.sweep_id).data.tags.get(schema.TAG_RAY_EXPERIMENT)

    def record_ray_experiment(self, path: str) -> None:
        """Record where Ray Tune keeps this sweep's state (``--resume`` restores it from there)."""
        self.client.set_tag(self.sweep_id, schema.TAG_RAY_EXPERIMENT, path)

    def close(self, n_points: int, n_finished: int, interrupted: bool) -> None:
        """End the parent run (see :func:`terminal_status`)."""
        self.client.set_terminated(self.sweep_id, terminal_status(n_points, n_finished, interrupted))

    def start(self, point: str, params: Mapping[str, Any], ray_trial: str, earlier: Iterable = (),
              resume_run_id: str | None = None) -> str:
        """A RUNNING run for ``point``; ``earlier`` attempts left RUNNING are marked KILLED.

        With ``resume_run_id`` (from a checkpoint) that run is continued instead.
        """
        for run in earlier:
            if run.info.status == "RUNNING" and run.info.run_id != resume_run_id:
                self.client.set_terminated(run.info.run_id, "KILLED")
        if resume_run_id is not None:  # a retried or resumed attempt continues its run
            self.client.update_run(resume_run_id, status="RUNNING")
            if schema.TAG_ERROR in self.client.get_run(resume_run_id).data.tags:
                self.client.delete_tag(resume_run_id, schema.TAG_ERROR)
            return resume_run_id
        tags = {schema.TAG_PARENT: self.sweep_id, schema.TAG_SWEEP: self.sweep_id, schema.TAG_STUDY: self.study,
                schema.TAG_KIND: schema.KIND_POINT, schema.TAG_POINT: point, schema.TAG_NODE: node_address(),
                schema.TAG_RAY_TRIAL: ray_trial}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=point.replace(" ", ","))
        log_flat(self.client, run.info.run_id, params=params)
        return run.info.run_id

    def finish(self, run_id: str, result: Result, logged: Mapping[str, float] | None = None) -> None:
        """Log the result in batches and mark the run FINISHED (``logged``: see :func:`result_metrics`)."""
        log_flat(self.client, run_id, params=result.params, metrics=result_metrics(result, logged))
        log_artifacts(self.client, run_id, result.artifacts)
        self.client.set_terminated(run_id, "FINISHED")

    def log_step(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """One ``log_batch`` of this step's values (a long point's per-epoch progress)."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                               if math.isfinite(v)])

    def fail(self, run_id: str, error: BaseException) -> None:
        """Mark the run FAILED with the message as a tag and the traceback as an artifact."""
        message = f"{type(error).__name__}: {error}"[:4000]
        self.client.set_tag(run_id, schema.TAG_ERROR, message)
        self.client.log_text(run_id, "".join(traceback.format_exception(error)), schema.TRACEBACK_ARTIFACT)
        self.client.set_terminated(run_id, "FAILED")


def log_analysis_run(client: MlflowClient, experiment_id: str, sweep_id: str, study: str,
                     paths: Iterable[Path]) -> str:
    """An analysis run nested under the sweep's parent, holding the output files as artifacts."""
    tags = {schema.TAG_PARENT: sweep_id, schema.TAG_SWEEP: sweep_id, schema.TAG_STUDY: study,
            schema.TAG_KIND: schema.KIND_ANALYSIS}
    run = client.create_run(experiment_id, tags=tags, run_name=f"analysis-{study}")
    for path in paths:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def reopen_sweep(client: MlflowClient, sweep_id: str) -> None:
    """Mark a sweep's parent RUNNING again (``--resume``)."""
    client.update_run(sweep_id, status="RUNNING")
