"""The Ray side of a sweep: a Tune function trainable (a Ray trial) computing a few grid points, one MLflow run each
(:class:`PointRun`: a short point's run is written whole when the point ends).

Points an earlier attempt of the same Ray trial already finished are skipped,
so retries and restores never duplicate a point; checkpointing studies get
:class:`RunEpochHooks` (per-epoch metrics and checkpoints in the point's MLflow
run, which every node reaches through the tracking server).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
import threading
import time
from typing import Any

from core.point import NO_HOOKS, PointContext, TrainedModel
from record import schema
from record.schema import MODEL_WEIGHTS
from record.store import store_gone
from record.write import SweepWriter, checkpoint_note
from tune_jobs.progress import POINTS, TRACKING_LOST
from tune_jobs.study import load_study
from tune_jobs.trial import TrialContext, unpack_point


class PointsFailed(RuntimeError):
    """Raised by a Ray trial after all its points ran, when some of them failed."""


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
    """

    STATE_FILE = "point_state.pt"
    SHARE = 0.05

    def __init__(self, writer: SweepWriter, point: str, every: int | None, earlier=(),
                 epochs_total: int | None = None) -> None:
        self.writer, self.point, self.every, self.epochs_total = writer, point, every, epochs_total
        self.run_id: str | None = None
        self.resumed_run_id: str | None = None
        self.resumed_epoch: int | None = None
        self._state: dict[str, Any] | None = None
        self._slot: str | None = None
        self._logged_through = -1
        self.last_logged: dict[str, float] = {}
        self.saved = 0
        self._cost, self._since = 0.0, time.monotonic()
        self._load(earlier)

    def _load(self, earlier) -> None:
        """The newest checkpoint among the point's earlier runs (loaded as tensors and plain containers only)."""
        import torch

        for run in earlier:  # newest first
            note = checkpoint_note(run)
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
            if saved.get("point") != self.point:
                continue
            self._state, self.resumed_run_id = saved["state"], run.info.run_id
            self.resumed_epoch, self._slot = note["epoch"], note["path"].split("/")[1]
            self._logged_through = self.writer.last_step(run.info.run_id)
            return

    def restore(self) -> dict[str, Any] | None:
        return self._state

    def epoch_end(self, epoch: int, metrics: dict[str, float], state) -> None:
        from ray import tune

        if epoch > self._logged_through:  # a resumed point re-trains epochs logged after its checkpoint
            self.writer.log_step(self.run_id, epoch, metrics)
        self.last_logged = dict(metrics)
        # Ray Tune's schedulers (ASHA) compare points on --metric after each "epochs_done"; a point they stop
        # leaves this call by SystemExit, and the driver records it as stopped early (tune_jobs.progress).
        total = {"epochs_total": self.epochs_total} if self.epochs_total else {}
        tune.report({"point": self.point, "status": "epoch", "epoch": epoch, "epochs_done": epoch + 1, **total,
                     "run_id": self.run_id, **metrics})
        if self._due(epoch):
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


def log_model(writer: SweepWriter, run_id: str, model: TrainedModel) -> None:
    """The point's trained model as ``model/state_dict.pt`` (tensors only) and ``model/model.json``."""
    import torch

    spec = {"registry_name": model.name, "kwargs": model.kwargs, "torch": torch.__version__,
            "load": "analysis.models.load_model(run_id), or core.models.build_model(registry_name, **kwargs) "
                    "then load_state_dict(torch.load(state_dict.pt, weights_only=True))"}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, MODEL_WEIGHTS)
        torch.save({k: v.detach().to("cpu") for k, v in model.module.state_dict().items()}, path)
        writer.log_model(run_id, spec, path)


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
    it RUNNING at once: the runner calls it for a point that has run :data:`OPEN_AFTER_S` (it then shows
    in the MLflow UI while it trains, and a worker lost mid-point leaves it for the launch to mark FAILED),
    and before anything that needs the run (system metrics, a model artifact). Thread-safe: the watchdog
    opens it from its own thread.
    """

    OPEN_AFTER_S = 2.0

    def __init__(self, writer: SweepWriter, point: str, params: dict[str, Any], ray_trial: str,
                 run_name: str | None) -> None:
        self.writer, self.point, self.params, self.ray_trial, self.run_name = writer, point, params, ray_trial, run_name
        self.run_id: str | None = None
        self._lock = threading.Lock()
        self._params_logged = False

    def open(self) -> str:
        """The run, RUNNING with its tags and params (created now if not yet)."""
        with self._lock:
            if self.run_id is None:
                self.run_id = self.writer.create(self.point, self.ray_trial, self.run_name)
            if not self._params_logged:
                self.writer.log_params(self.run_id, self.params)
                self._params_logged = True
            return self.run_id

    def adopt(self, run_id: str) -> str:
        """Take ``run_id`` (opened by the caller, params logged) as the point's run; returns it."""
        with self._lock:
            self.run_id, self._params_logged = run_id, True
            return run_id

    def finish(self, result, logged: dict[str, float] | None = None) -> None:
        """Log the result and mark the run FINISHED (params and result in one batch for a run not yet open;
        ``logged``: see :func:`record.write.result_metrics`)."""
        with self._lock:
            if self.run_id is None:
                self.run_id = self.writer.create(self.point, self.ray_trial, self.run_name)
            self.writer.finish(self.run_id, result, logged=logged, params={} if self._params_logged else self.params)
            self._params_logged = True

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED with the error (created with its params first if not yet open)."""
        try:
            self.open()
        finally:
            if self.run_id is not None:
                self.writer.fail(self.run_id, error)


class PointTimeout(TimeoutError):
    """A point ran longer than ``--point-timeout``."""


class Watchdog:
    """Fails the point running in this thread once it has run ``timeout`` seconds (and calls ``on_long``, if
    given, once it has run ``long_after`` seconds).

    It raises :class:`PointTimeout` in the point's thread (Python code stops at
    its next line); a point stuck in native code for a further ``grace``
    seconds has its run marked FAILED and its worker process ended (the Ray
    trial then errors, and the launch reports it).
    """

    def __init__(self, timeout: float | None, on_stuck, grace: float = 30.0, on_long=None,
                 long_after: float = PointRun.OPEN_AFTER_S) -> None:
        self.timeout, self.on_stuck, self.grace = timeout, on_stuck, grace
        self.on_long, self.long_after = on_long, long_after
        self._thread_id = threading.get_ident()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> "Watchdog":
        if self.timeout is not None or self.on_long is not None:
            threading.Thread(target=self._watch, name="robustlab-point-timeout", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done.set()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)  # none pending

    def _watch(self) -> None:
        waited = 0.0
        if self.on_long is not None:
            waited = self.long_after if self.timeout is None else min(self.long_after, self.timeout)
            if self._done.wait(waited):
                return
            try:
                self.on_long()
            except Exception:  # noqa: BLE001 - the point's end writes its run (or reports a store that is gone)
                pass
            if self.timeout is None:
                return
        if self._done.wait(self.timeout - waited):
            return
        with self._lock:
            if self._done.is_set():
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(PointTimeout))
        if not self._done.wait(self.grace):
            self.on_stuck(PointTimeout(f"the point ran longer than --point-timeout {self.timeout:g} s and did not "
                                       f"stop within {self.grace:g} s more (stuck in native code)"))
            os._exit(70)


def run_points(trial_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: compute the Ray trial's grid points, one MLflow run each.

    A point that raises (or times out) ends FAILED and the next one starts; a
    tracking store that stopped answering ends the Ray trial, reported as
    ``tracking_lost`` (every later point would be lost too; the driver stops).
    """
    trial = trial_config["trial"]
    context: TrialContext = trial["context"]
    study = load_study(context.study)
    configs = [unpack_point(study, text) for text in trial["points"]]
    _compute(context, study, [(study.point_key(c, context.point_dims), c) for c in configs])


def run_search_point(trial_config: dict[str, Any]) -> None:
    """Ray Tune function trainable of a search: one point, a grid point (``base``, from Ray Tune's
    ``grid_search``) with the searched keys Ray Tune sampled (flat keys of ``trial_config``)."""
    context: TrialContext = trial_config["context"]
    study = load_study(context.study)
    base = schema.unpack(trial_config["base"])
    config = study.make_config({**base, **{key: trial_config[key] for key in context.space_keys}})
    _compute(context, study, [(study.point_key(config, context.point_dims), config)])


def _compute(context: TrialContext, study, points: list[tuple[str, Any]]) -> None:
    """The points of one Ray trial, in order, each its own MLflow run (those a study's ``run_points`` can
    compute together first computed at once)."""
    from ray import tune

    from core.training import select_device  # torch: here, not where the launcher imports this module

    uri = context.tracking_uri
    writer = SweepWriter(uri, context.experiment_id, context.sweep_id, study.name, context.provenance)
    device = str(select_device("cuda" if context.gpus_per_trial > 0 else "cpu"))
    threads = max(1, int(context.cpus_per_trial))
    ray_trial = tune.get_context().get_trial_id()
    interval = context.system_metrics
    failures, reports = [], _Reports()
    try:
        # Earlier runs of these points: a retry's or restore's (this Ray trial's), and for checkpointing studies
        # any earlier launch's of the sweep (a --resume continues their checkpoints). One search either way.
        earlier = writer.runs_by_point(None if study.checkpoints else ray_trial)
        pending = []
        for index, (point, config) in enumerate(points):
            if any(run.info.status == "FINISHED" for run in earlier.get(point, ())):
                reports.send({"point": point, "status": "skipped", "points_done": index + 1})
            else:
                name = study.run_name(point, getattr(context, "single_dims", ()))  # one-valued grid dims last
                pending.append((index, point, config, PointRun(writer, point, study.params(config), ray_trial, name)))
        together = {}
        if study.run_points is not None and not study.checkpoints and not interval and len(pending) > 1:
            together = _compute_together(context, study, pending, PointContext(device=device, threads=threads))
        if not together:  # the skipped points' outcomes go now, each computed point's as it ends
            reports.release()
        for index, point, config, run in pending:
            hooks = None
            if study.checkpoints:  # the run opens at once: each epoch and checkpoint goes into it
                hooks = RunEpochHooks(writer, point, context.checkpoint_every, earlier.get(point, ()),
                                      run.params.get("epochs"))
                hooks.run_id = run.adopt(writer.start(point, run.params, ray_trial, earlier=earlier.get(point, ()),
                                                      resume_run_id=hooks.resumed_run_id,
                                                      resumed_epoch=hooks.resumed_epoch, run_name=run.run_name))
            else:
                writer.kill_earlier(earlier.get(point, ()))
            try:
                result = together.get(point)
                if result is None:
                    point_context = PointContext(device=device, threads=threads, hooks=hooks or NO_HOOKS)
                    with (system_metrics(uri, run.open() if interval else None, interval),
                          Watchdog(context.point_timeout, run.fail, on_long=None if hooks else run.open)):
                        result = study.run_point(config, point_context)
                study.check_result(result)
                if context.log_models and result.model is not None:
                    log_model(writer, run.open(), result.model)
                run.finish(result, logged=hooks.last_logged if hooks else None)
                if hooks is not None:
                    try:
                        writer.drop_checkpoints(run.run_id, keep_latest=context.keep_checkpoints)
                    except Exception as error:  # noqa: BLE001 - the point is recorded; a leftover only takes disk
                        print(f"robustlab: point {point}: its checkpoints could not be deleted from run "
                              f"{run.run_id} ({type(error).__name__}: {error})", flush=True)
            except PointTimeout:
                error = PointTimeout(f"the point ran longer than --point-timeout {context.point_timeout:g} s")
            except Exception as raised:  # the point fails; the Ray trial's other points go on
                if store_gone(uri):
                    raise
                error = raised
            else:
                reports.send({"point": point, "status": "finished", "points_done": index + 1, **result.metrics})
                continue
            run.fail(error)
            failures.append(f"{point}: {type(error).__name__}: {error}")
            reports.send({"point": point, "status": "failed", "points_done": index + 1, "error": str(error)[:500]})
        reports.release()
    except Exception as error:
        if store_gone(uri):
            tune.report({"status": TRACKING_LOST, "error": f"{type(error).__name__}: {error}"[:500]})
        raise
    if failures:
        raise PointsFailed(f"{len(failures)} point(s) failed: " + "; ".join(failures))


class _Reports:
    """Points' outcomes for the driver, held from the start until :meth:`release`, then sent one Ray Tune result
    each. Held ones go as one result (``status`` :data:`tune_jobs.progress.POINTS`): a Ray Tune result costs the
    driver CPU, so points recorded together are reported together."""

    def __init__(self) -> None:
        self._held: list[dict[str, Any]] | None = []

    def send(self, outcome: dict[str, Any]) -> None:
        from ray import tune

        if self._held is None:
            tune.report(outcome)
        else:
            self._held.append(outcome)

    def release(self) -> None:
        from ray import tune

        held, self._held = self._held, None
        if held:
            tune.report(held[0] if len(held) == 1 else {"status": POINTS, "outcomes": held})


def _compute_together(context: TrialContext, study, pending: list[tuple[int, str, Any, PointRun]],
                      point_context: PointContext) -> dict[str, Any]:
    """The results of ``study.run_points`` over the pending points, by point; none if it raised (each point
    then runs alone, so an error or a timeout is the point's own).  ``--point-timeout`` bounds the whole
    computation by the points' total; their runs open RUNNING once it has run :data:`PointRun.OPEN_AFTER_S`."""
    runs = [run for _, _, _, run in pending]
    timeout = context.point_timeout

    def fail_all(error: BaseException) -> None:
        for run in runs:
            run.fail(error)

    def open_all() -> None:
        for run in runs:
            run.open()

    try:
        with Watchdog(None if timeout is None else timeout * len(runs), fail_all, on_long=open_all):
            results = study.run_points([config for _, _, config, _ in pending], point_context)
            if len(results) != len(pending):
                raise ValueError(f"run_points returned {len(results)} results for {len(pending)} points")
    except Exception as error:  # noqa: BLE001 - PointTimeout included: the points run alone instead
        if store_gone(context.tracking_uri):
            raise
        print(f"robustlab: {len(runs)} points computed together failed ({type(error).__name__}: {error}); "
              "computing them one by one", flush=True)
        return {}
    return {point: result for (_, point, _, _), result in zip(pending, results)}
