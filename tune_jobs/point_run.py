"""The MLflow side of one point inside a Ray trial: its run (:class:`PointRun`, written whole when a short point
ends), per-epoch metrics and checkpoints in that run (:class:`RunEpochHooks`), its trained model and MLflow's
system metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
import time
from typing import Any

from core.point import TrainedModel
from record.checkpoints import checkpoint_note
from record.schema import MODEL_WEIGHTS
from record.write import SweepWriter


class RunEpochHooks:
    """:class:`core.point.EpochHooks` for a long point, kept in the point's own MLflow run.

    Each epoch's metrics are logged at ``step=epoch``; the latest checkpoint is
    an artifact of the run (``checkpoint/a`` and ``checkpoint/b`` in turn, the
    ``robustlab.checkpoint`` tag naming the complete one), so it reaches every
    node through the tracking server: no shared filesystem.  A retried Ray
    trial (another node's, after a node died) or a ``--resume`` continues the
    point's newest checkpointed run from that epoch, logging no epoch twice.

    ``every``: checkpoint every that many epochs; None (``auto``) checkpoints
    once the time trained since the last one is at least 20 times what that
    one cost (at most 5 % of the point's time goes to checkpoints).
    ``checkpoints=False`` (a study that reports epochs but does not checkpoint, under a scheduler): epochs are
    logged and reported live, nothing is saved or restored.
    """

    STATE_FILE = "point_state.pt"
    SHARE = 0.05

    def __init__(self, writer: SweepWriter, point: str, every: int | None, earlier=(),
                 epochs_total: int | None = None, checkpoints: bool = True, metric: str | None = None) -> None:
        self.writer, self.point, self.every, self.epochs_total = writer, point, every, epochs_total
        self.checkpoints, self.metric = checkpoints, metric
        self.run_id: str | None = None
        self.resumed_run_id: str | None = None
        self.resumed_epoch: int | None = None
        self._state: dict[str, Any] | None = None
        self._slot: str | None = None
        self._logged_through = -1
        self.last_logged: dict[str, float] = {}
        self.saved = 0
        self._cost, self._since = 0.0, time.monotonic()
        if checkpoints:
            self._load(earlier)

    def _load(self, earlier) -> None:
        """The newest checkpoint among the point's earlier runs (loaded as tensors and plain containers only).

        Only a checkpoint in the run's own slots, saved by that run for this point, is taken (its tag is anyone's
        to set); the metrics the run holds then count as logged, so a point resumed after its last epoch logs
        none again."""
        import torch

        ignored = []

        def note_ignored(why: str) -> None:
            ignored.append(why)
            print(f"robustlab: point {self.point}: {why}", flush=True)

        for run in earlier:  # newest first
            note = checkpoint_note(run, on_ignored=note_ignored)
            if note is None:
                continue
            try:
                with tempfile.TemporaryDirectory() as folder:
                    path = self.writer.download_checkpoint(run.info.run_id, note, folder)
                    saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - a lost or damaged checkpoint: try an older one, else start over
                print(f"robustlab: point {self.point}: checkpoint of run {run.info.run_id} unusable "
                      f"({type(error).__name__}: {error}); trying an older one", flush=True)
                continue
            if not isinstance(saved, dict) or saved.get("point") != self.point or saved.get("run_id") != run.info.run_id:
                note_ignored(f"run {run.info.run_id}: its checkpoint {note['path']!r} was not saved by that run for "
                             "this point; ignored")
                continue
            self._state, self.resumed_run_id = saved["state"], run.info.run_id
            self.resumed_epoch, self._slot = note["epoch"], note["path"].split("/")[1]
            self._logged_through = self.writer.last_step(run.info.run_id)
            self.last_logged = dict(run.data.metrics)
            return
        if ignored:
            print(f"robustlab: point {self.point}: no usable checkpoint; the point starts over", flush=True)

    def restore(self) -> dict[str, Any] | None:
        return self._state

    def epoch_end(self, epoch: int, metrics: dict[str, float], state) -> None:
        from ray import tune

        if self.metric is not None and self.metric not in metrics:  # a scheduler would compare points on nothing
            raise ValueError(f"epoch {epoch} reports no {self.metric!r} (--metric, which the scheduler compares "
                             f"points on); it reports {', '.join(map(repr, metrics)) or 'nothing'}")
        if epoch > self._logged_through:  # a resumed point re-trains epochs logged after its checkpoint
            self.writer.log_step(self.run_id, epoch, metrics)
        self.last_logged = dict(metrics)
        # Ray Tune's schedulers (ASHA) compare points on --metric after each "epochs_done"; a point they stop
        # leaves this call by SystemExit, and the driver records it as stopped early (tune_jobs.progress).
        total = {"epochs_total": self.epochs_total} if self.epochs_total else {}
        tune.report({"point": self.point, "status": "epoch", "epoch": epoch, "epochs_done": epoch + 1, **total,
                     "run_id": self.run_id, **metrics})
        if self.checkpoints and self._due(epoch):
            self._save(epoch, state())

    def _due(self, epoch: int) -> bool:
        if self.every is not None:
            return (epoch + 1) % self.every == 0
        return time.monotonic() - self._since >= self._cost / self.SHARE

    def _save(self, epoch: int, state: dict[str, Any]) -> None:
        import torch

        started = time.monotonic()
        slot = "b" if self._slot == "a" else "a"
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, self.STATE_FILE)
            torch.save({"point": self.point, "run_id": self.run_id, "state": state}, path)
            self.writer.save_checkpoint(self.run_id, path, slot, epoch)
        self._slot, self.saved = slot, self.saved + 1
        self._since = time.monotonic()
        self._cost = self._since - started


class EpochRecorder:
    """:class:`core.point.EpochHooks` of a point that reports epochs without checkpointing, among the packed points
    of a Ray trial: each epoch's metrics are kept in memory and become the run's histories (step = epoch), written
    with the rest of the point's result in one batch when it ends. Nothing goes to Ray Tune or the console per
    epoch, nothing is restored."""

    def __init__(self) -> None:
        self.epochs: dict[str, dict[int, float]] = {}

    def restore(self) -> None:
        return None

    def epoch_end(self, epoch: int, metrics: dict[str, float], state) -> None:
        for name, value in metrics.items():
            self.epochs.setdefault(name, {})[int(epoch)] = float(value)

    def merged(self, result):
        """``result`` with the recorded epochs among its histories (a history the result carries itself wins)."""
        if not self.epochs:
            return result
        return dataclasses.replace(result, histories={**self.epochs, **result.histories})


def log_model(writer: SweepWriter, run_id: str, model: TrainedModel) -> str:
    """The point's trained model as an MLflow logged model of its run (:func:`record.models.log_point_model`):
    ``state_dict.pt`` (tensors only) and ``model.json`` for the project's loader, plus MLflow's ``pytorch`` flavour
    in its ``pt2`` format (a ``torch.export`` program, which MLflow can check holds no pickle) where the study gave an
    example input and the module exports; returns the model id."""
    import torch

    spec = {"registry_name": model.name, "kwargs": model.kwargs, "torch": torch.__version__,
            "load": "analysis.models.load_model(run_id or 'models:/<model id>'), or "
                    "core.models.build_model(registry_name, **kwargs) "
                    "then load_state_dict(torch.load(state_dict.pt, weights_only=True))"}
    weights = {k: v.detach().to("cpu") for k, v in model.module.state_dict().items()}

    def write(folder, mlflow_model) -> None:
        if model.example_input is not None:
            _save_mlflow_flavour(model, folder, mlflow_model)
        folder.mkdir(exist_ok=True)
        torch.save(weights, folder / MODEL_WEIGHTS)

    return writer.log_model(run_id, spec, write)


def _save_mlflow_flavour(model: TrainedModel, folder, mlflow_model) -> None:
    """MLflow's ``pytorch`` flavour of ``model`` in ``folder`` (``MLmodel``, ``data/model.pt2``, its signature
    from the example input); a module that does not export is logged without it (said on the console)."""
    import copy
    import shutil

    import mlflow.pytorch
    import torch

    module = copy.deepcopy(model.module).to("cpu").eval()
    example = torch.as_tensor(model.example_input).detach().to("cpu").numpy()
    try:
        with torch.no_grad():
            mlflow.pytorch.save_model(module, str(folder), mlflow_model=mlflow_model, serialization_format="pt2",
                                      input_example=example,
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    except Exception as error:  # noqa: BLE001 - the project's loader still has what it needs
        shutil.rmtree(folder, ignore_errors=True)
        print(f"robustlab: the model of run {mlflow_model.run_id} has no MLflow flavour "
              f"({type(error).__name__}: {str(error)[:300]}); analysis.models.load_model still loads it", flush=True)


@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str, interval: float):
    """MLflow's system metrics (``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
    GPU ones where a GPU is seen, ...) sampled every ``interval`` seconds into the run while the block runs.

    Through MLflow's public switch, ``mlflow.start_run(run_id, log_system_metrics=True)``; leaving it ends that
    fluent run with the status the record already gave the run (the writer ends runs), so nothing changes there.
    """
    if not interval:
        yield
        return
    import mlflow

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop notes, once per point
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_system_metrics_sampling_interval(interval)
    mlflow.start_run(run_id=run_id, log_system_metrics=True)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a store that stopped answering is reported by the point
            mlflow.end_run(mlflow.tracking.MlflowClient(tracking_uri).get_run(run_id).info.status)


class PointRun:
    """The MLflow run of one point, written when the point ends unless it is opened earlier.

    A short point's run is written whole when it ends (four writes: tags, params and metrics, dataset
    inputs, status), so the record shows no RUNNING run for a point of milliseconds. :meth:`open` creates
    it RUNNING at once: the worker calls it for a point that has run :data:`tune_jobs.watchdog.OPEN_AFTER_S`
    (it then shows in the MLflow UI while it trains, and a worker lost mid-point leaves it for the launch to mark
    FAILED),
    and before anything that needs the run (system metrics, a model artifact). Thread-safe: the watchdog
    opens it from its own thread.
    """


    def __init__(self, writer: SweepWriter, point: str, params: dict[str, Any], ray_trial: str,
                 run_name: str | None, dims: dict[str, Any] | None = None) -> None:
        self.writer, self.point, self.params, self.ray_trial, self.run_name = writer, point, params, ray_trial, run_name
        self.dims = dims or {}  # the point's grid values: numeric ones are also logged as dim.<name> metrics
        self.run_id: str | None = None
        self._lock = threading.Lock()
        self._params_logged = False

    def open(self) -> str:
        """The run, RUNNING with its tags and params (created now if not yet)."""
        with self._lock:
            if self.run_id is None:
                self.run_id = self.writer.create(self.point, self.ray_trial, self.run_name)
            if not self._params_logged:
                self.writer.log_params(self.run_id, self.params, self.dims)
                self._params_logged = True
            return self.run_id

    def adopt(self, run_id: str) -> str:
        """Take ``run_id`` (opened by the caller, params logged) as the point's run; returns it."""
        with self._lock:
            self.run_id, self._params_logged = run_id, True
            return run_id

    def finish(self, result, logged: dict[str, float] | None = None, model_id: str | None = None) -> None:
        """Log the result and mark the run FINISHED (params and result in one batch for a run not yet open;
        ``logged``: see :func:`record.write.result_metrics`; ``model_id``: its logged model)."""
        with self._lock:
            if self.run_id is None:
                self.run_id = self.writer.create(self.point, self.ray_trial, self.run_name)
            fresh = not self._params_logged
            self.writer.finish(self.run_id, result, logged=logged, params=self.params if fresh else {},
                               model_id=model_id, dims=self.dims if fresh else {})
            self._params_logged = True

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED with the error (created with its params first if not yet open)."""
        try:
            self.open()
        finally:
            if self.run_id is not None:
                self.writer.fail(self.run_id, error)

