"""What launching writes: a sweep's parent run and one run per grid point, in few ``log_batch`` calls."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from record import checkpoints, models, schema
from record.runs import point_runs, point_statuses
from record.store import StoreError

_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100


class Result(Protocol):
    """What a point produced (``core.point.PointResult`` has this shape)."""

    metrics: dict[str, float]
    histories: dict[str, list[float] | dict[int, float]]
    params: dict[str, Any]
    artifacts: dict[str, Any]
    datasets: tuple  # of ``core.point.DataRecord``: name, digest, source_type, source, profile, context


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
    series = {k: sorted(v.items()) if isinstance(v, Mapping) else list(enumerate(v))
              for k, v in result.histories.items()}
    last = dict(logged) if logged is not None else {k: v[-1][1] for k, v in series.items() if v}
    metrics = [Metric(k, float(v), now, 0) for k, v in result.metrics.items() if math.isfinite(v) and last.get(k) != v]
    if logged is None:
        for name, points in series.items():
            metrics += [Metric(name, float(v), now, int(step)) for step, v in points if math.isfinite(v)]
    return metrics


def dim_metrics(values: Mapping[str, Any]) -> list[Metric]:
    """A point's numeric grid values as metrics at step 0 (:func:`record.schema.dim_metrics`)."""
    now = int(time.time() * 1000)
    return [Metric(k, v, now, 0) for k, v in schema.dim_metrics(values).items()]


def dataset_inputs(records: Iterable[Any]) -> list[DatasetInput]:
    """MLflow dataset inputs for ``core.point.DataRecord``-shaped records (the run's "Datasets" in the UI)."""
    inputs = []
    for record in records:
        source = json.dumps({"uri": record.source} if record.source_type == "local" else {"name": record.source})
        dataset = Dataset(record.name, record.digest, record.source_type, source,
                          profile=json.dumps(dict(record.profile), sort_keys=True))
        inputs.append(DatasetInput(dataset, [InputTag(schema.TAG_DATASET_CONTEXT, record.context)]))
    return inputs


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
                 param_types: Mapping[str, str], provenance: Mapping[str, str] = (), note: str | None = None) -> str:
    """A new sweep's parent run (RUNNING): fixed values and ``grid.<dim>`` lists as params, ``provenance`` tags
    and ``note`` as its description; returns its id."""
    tags = {schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SCHEMA_VERSION: schema.SCHEMA_VERSION,
            schema.TAG_STUDY: study, schema.TAG_COMMAND: command[:4000], **dict(provenance)}
    if note:
        tags[schema.TAG_NOTE] = note
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    sweep_id = run.info.run_id
    client.update_run(sweep_id, name=f"{run_name}-{sweep_id[:6]}")  # names in the UI tell sweeps of a day apart
    params = dict(fixed)
    params.update({f"{schema.GRID_PREFIX}{d}": tuple(v) for d, v in grid.items()})
    log_flat(client, sweep_id, params=params,
             tags={schema.TAG_SWEEP: sweep_id, schema.TAG_N_POINTS: n_points,
                   schema.TAG_PARAM_TYPES: schema.encode_types(param_types)})
    return sweep_id


def check_artifacts(client: MlflowClient, sweep_id: str) -> None:
    """Write ``launch.json`` (who launched what, when) to the parent run: proves the artifact store takes writes
    before any point trains; a ``StoreError`` names the artifact location otherwise."""
    note = {"command": sys.argv, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    try:
        client.log_text(sweep_id, json.dumps(note, indent=1), "launch.json")
    except Exception as error:  # noqa: BLE001 - any failure here means artifacts would be lost
        location = client.get_run(sweep_id).info.artifact_uri
        raise StoreError(f"the artifact store {location} cannot be written: {error}") from None


def terminal_status(n_points: int, n_finished: int, interrupted: bool) -> str:
    """The parent run's final status: KILLED when interrupted, FINISHED when every point finished, else FAILED."""
    if interrupted:
        return RunStatus.to_string(RunStatus.KILLED)
    return "FINISHED" if n_finished == n_points else "FAILED"


def node_address() -> str:
    """The Ray node this process runs on (its IP address) when inside Ray, else the host name.

    Ray is not imported here: only a process that already runs it is asked.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.util.get_node_ip_address()
    import socket

    return socket.gethostname()


class SweepWriter:
    """One sweep's runs as launching writes them: the parent's end, and each point's run from start to end."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str, study: str,
                 provenance: Mapping[str, str] = ()) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self.study = study
        self.provenance = dict(provenance)  # tags every point's run carries (where it came from)

    def recorded_params(self) -> dict[str, dict[str, str]]:
        """The params each point's newest run recorded, by point (what ``--resume`` compares a point against)."""
        found: dict[str, dict[str, str]] = {}
        for run in point_runs(self.client, self.experiment_id, self.sweep_id):  # newest first
            found.setdefault(run.data.tags.get(schema.TAG_POINT), dict(run.data.params))
        return found

    def runs_by_point(self, ray_trial: str) -> dict[str, list]:
        """The runs one Ray trial's earlier attempts left (a retry's, a restore's), by point: one search."""
        found: dict[str, list] = {}
        for run in point_runs(self.client, self.experiment_id, self.sweep_id, ray_trial=ray_trial):
            found.setdefault(run.data.tags.get(schema.TAG_POINT), []).append(run)
        return found

    def point_outcomes(self) -> tuple[set[str], set[str]]:
        """Points with a FINISHED run, and points whose runs FAILED with none finished."""
        statuses = point_statuses(self.client, self.experiment_id, self.sweep_id)
        finished = {point for point, seen in statuses.items() if "FINISHED" in seen}
        return finished, {point for point, seen in statuses.items() if "FAILED" in seen} - finished

    def record_best(self, run_id: str, metric: str, value: float, params: Mapping[str, Any]) -> None:
        """The best point on the parent run: ``best.<key>`` params, the ``best_<metric>`` metric, its run id as
        the ``robustlab.best_run_id`` tag (a resumed search whose best changed keeps the first params as tags)."""
        self.client.set_tag(self.sweep_id, schema.TAG_BEST_RUN, run_id)
        self.client.log_metric(self.sweep_id, f"best_{metric}", value)
        best = {f"best.{k}": v for k, v in params.items()}
        try:
            log_flat(self.client, self.sweep_id, params=best)
        except Exception:  # noqa: BLE001 - params are write-once: a resume's new best goes to tags
            log_flat(self.client, self.sweep_id, tags=best)

    def take_over(self) -> set[str]:
        """For ``--resume``: mark the runs a dead launch left RUNNING KILLED; returns the finished points."""
        for run in point_runs(self.client, self.experiment_id, self.sweep_id, status="RUNNING"):
            self.client.set_terminated(run.info.run_id, "KILLED")
        return self.point_outcomes()[0]

    def abandon(self, status: str, reason: str) -> None:
        """End the parent run of a launch that stopped before its Ray trials ran, with ``reason`` as its error."""
        self.client.set_terminated(self.sweep_id, status)
        self.client.set_tag(self.sweep_id, schema.TAG_ERROR, reason[:4000])

    def record_ray_experiment(self, path: str) -> None:
        """Record where Ray Tune keeps this sweep's state (``--resume`` restores it from there)."""
        self.client.set_tag(self.sweep_id, schema.TAG_RAY_EXPERIMENT, path)

    def close(self, n_points: int, n_finished: int, interrupted: bool) -> None:
        """End the parent run (see :func:`terminal_status`)."""
        self.client.set_terminated(self.sweep_id, terminal_status(n_points, n_finished, interrupted))

    def start(self, point: str, params: Mapping[str, Any], ray_trial: str, earlier: Iterable = (),
              resume_run_id: str | None = None, resumed_epoch: int | None = None, run_name: str | None = None,
              dims: Mapping[str, Any] = ()) -> str:
        """A RUNNING run for ``point`` (``dims``: its grid values, see :meth:`log_params`); ``earlier`` attempts
        left RUNNING are marked KILLED.

        With ``resume_run_id`` (the run holding the checkpoint of ``resumed_epoch``) that run is continued instead.
        """
        self.kill_earlier(earlier, keep=resume_run_id)
        if resume_run_id is not None:  # a retried or resumed attempt continues its run (on this node now)
            self.client.update_run(resume_run_id, status="RUNNING")
            if schema.TAG_ERROR in self.client.get_run(resume_run_id).data.tags:
                self.client.delete_tag(resume_run_id, schema.TAG_ERROR)
            log_flat(self.client, resume_run_id, tags={schema.TAG_NODE: node_address(), schema.TAG_RAY_TRIAL: ray_trial,
                                                       schema.TAG_RESUMED: resumed_epoch})
            return resume_run_id
        run_id = self.create(point, ray_trial, run_name)
        self.log_params(run_id, params, dims)
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any], dims: Mapping[str, Any] = ()) -> None:
        """The point's params (encoded) and its numeric grid values ``dims`` as ``dim.<name>`` metrics
        (:func:`dim_metrics`) in as few writes as MLflow allows."""
        log_flat(self.client, run_id, params=params, metrics=dim_metrics(dims))

    def kill_earlier(self, earlier: Iterable, keep: str | None = None) -> None:
        """Mark KILLED the ``earlier`` runs of a point left RUNNING (a dead attempt's), all but ``keep``."""
        for run in earlier:
            if run.info.status == "RUNNING" and run.info.run_id != keep:
                self.client.set_terminated(run.info.run_id, "KILLED")

    def create(self, point: str, ray_trial: str, run_name: str | None = None) -> str:
        """A RUNNING run for ``point`` with every tag of the record in one write (tags cost far less here than
        in ``log_batch``); returns its id."""
        tags = {**self.provenance, schema.TAG_PARENT: self.sweep_id, schema.TAG_SWEEP: self.sweep_id,
                schema.TAG_STUDY: self.study, schema.TAG_KIND: schema.KIND_POINT,
                schema.TAG_SCHEMA_VERSION: schema.SCHEMA_VERSION, schema.TAG_POINT: point,
                schema.TAG_NODE: node_address(), schema.TAG_RAY_TRIAL: ray_trial}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=run_name or point).info.run_id

    def finish(self, run_id: str, result: Result, logged: Mapping[str, float] | None = None,
               params: Mapping[str, Any] = (), model_id: str | None = None, dims: Mapping[str, Any] = ()) -> None:
        """Log ``params`` and the result in batches and mark the run FINISHED (``logged``: see
        :func:`result_metrics`): a run :meth:`create` just made is complete in four writes. ``model_id``: the
        point's logged model (:meth:`log_model`), which its final metrics are linked to; ``dims``: the grid values
        to log with ``params`` (see :meth:`log_params`)."""
        metrics = models.model_metrics(result_metrics(result, logged), model_id, result.metrics) + dim_metrics(dims)
        log_flat(self.client, run_id, params={**dict(params), **result.params}, metrics=metrics)
        if result.datasets:
            self.log_inputs(run_id, result.datasets)
        log_artifacts(self.client, run_id, result.artifacts)
        self.client.set_terminated(run_id, "FINISHED")

    def log_inputs(self, run_id: str, records: Iterable[Any]) -> None:
        """The point's data as dataset inputs (:func:`dataset_inputs`).

        MLflow's store looks a data set up, then inserts it: points of one experiment logging the same new data
        set at once race, and the loser's transaction fails whole; its retry finds the data set in place.
        """
        inputs = dataset_inputs(records)
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def save_checkpoint(self, run_id: str, local_file: str, slot: str, epoch: int) -> None:
        """See :func:`record.checkpoints.save_checkpoint`."""
        checkpoints.save_checkpoint(self.client, run_id, local_file, slot, epoch, node_address())

    def download_checkpoint(self, run_id: str, note: Mapping[str, Any], folder: str) -> str:
        """See :func:`record.checkpoints.download_checkpoint`."""
        return checkpoints.download_checkpoint(self.client, run_id, note, folder)

    def drop_checkpoints(self, run_id: str, keep_latest: bool = False) -> None:
        """See :func:`record.checkpoints.drop_checkpoints`."""
        checkpoints.drop_checkpoints(self.client, run_id, keep_latest)

    def log_model(self, run_id: str, spec: Mapping[str, Any], write) -> str:
        """The point's trained model as an MLflow logged model of its run; returns its id (see
        :func:`record.models.log_point_model`)."""
        return models.log_point_model(self.client, run_id, spec, write)

    def last_step(self, run_id: str) -> int:
        """The last epoch the run's metric histories hold so far (-1 when none). Its grid values (``dim.*``, at step
        0) and MLflow's system metrics (``system/*``, a step per sample) are not epochs."""
        run = self.client.get_run(run_id)
        names = [name for name in run.data.metrics if not schema.is_dim_metric(name) and not name.startswith("system/")]
        return max((m.step for name in names for m in self.client.get_metric_history(run_id, name)), default=-1)

    def stop_early(self, run_id: str, epochs_done: int) -> None:
        """A point a scheduler stopped: FINISHED, tagged with the epochs it trained, its checkpoints deleted."""
        self.client.set_tag(run_id, schema.TAG_STOPPED, str(epochs_done))
        self.client.set_terminated(run_id, "FINISHED")
        self.drop_checkpoints(run_id)

    def log_step(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """One ``log_batch`` of this step's values (a long point's per-epoch progress)."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                               if math.isfinite(v)])

    def fail(self, run_id: str, error: BaseException) -> None:
        """Mark the run FAILED, then add the message as a tag and the traceback as an artifact.

        The status comes first: a store that takes no artifacts (or no tags) still ends the run.
        """
        self.client.set_terminated(run_id, "FAILED")
        self.client.set_tag(run_id, schema.TAG_ERROR, f"{type(error).__name__}: {error}"[:4000])
        try:
            self.client.log_text(run_id, "".join(traceback.format_exception(error)), schema.TRACEBACK_ARTIFACT)
        except Exception:  # noqa: BLE001 - the run is FAILED with its message; the traceback is a bonus
            pass

    def end_orphans(self, status: str, reason: str) -> int:
        """After a launch's Ray trials are all over: end the runs still RUNNING (their Ray trial died) with
        ``status`` and ``reason`` as their error; returns how many."""
        orphans = point_runs(self.client, self.experiment_id, self.sweep_id, status="RUNNING")
        for run in orphans:
            self.client.set_terminated(run.info.run_id, status)
            self.client.set_tag(run.info.run_id, schema.TAG_ERROR, reason)
        return len(orphans)


def log_analysis_run(client: MlflowClient, experiment_id: str, sweep_id: str, study: str,
                     paths: Iterable[Path], metrics: Mapping[str, float] = (),
                     provenance: Mapping[str, str] = (), *, sweep_name: str | None = None,
                     findings: Sequence[str] = (), params: Mapping[str, Any] = (),
                     histories: Mapping[str, Mapping[int, float]] = ()) -> str:
    """An analysis run nested under the sweep's parent (``provenance``: its context tags), named
    ``analysis-<sweep run name>`` (``analysis-<study>`` without ``sweep_name``), with the finding sentences as its
    description, its settings (``params``) as params, the output files as artifacts and the findings as metrics;
    the findings also go on the parent (so sweeps compare in the runs table); ``histories`` (a finding's curve over
    an integer dimension: name -> {step: value}) on the analysis run only. One ``log_batch`` each (MLflow's limits
    allowing); non-finite values (a fit that failed) are left out."""
    tags = {**dict(provenance), schema.TAG_PARENT: sweep_id, schema.TAG_SWEEP: sweep_id, schema.TAG_STUDY: study,
            schema.TAG_KIND: schema.KIND_ANALYSIS, schema.TAG_SCHEMA_VERSION: schema.SCHEMA_VERSION}
    if findings:
        tags[schema.TAG_NOTE] = "\n".join(f"- {f}" for f in findings)
    run = client.create_run(experiment_id, tags=tags, run_name=f"analysis-{sweep_name or study}")
    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items()
              if v is not None and math.isfinite(float(v))]
    curves = [Metric(k, float(v), now, int(step)) for k, points in dict(histories).items()
              for step, v in points.items() if v is not None and math.isfinite(float(v))]
    log_flat(client, run.info.run_id, params=params, metrics=values + curves)
    log_flat(client, sweep_id, metrics=values)
    for path in paths:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def reopen_sweep(client: MlflowClient, sweep_id: str) -> None:
    """Mark a sweep's parent RUNNING again (``--resume``)."""
    client.update_run(sweep_id, status="RUNNING")
