"""The Ray side of a sweep: a Tune function trainable (a Ray trial) computing a few grid points, one MLflow run each.

Points an earlier attempt of the same Ray trial already finished are skipped,
so retries and restores never duplicate a point; checkpointing studies get
:class:`TuneEpochHooks` (per-epoch MLflow metrics and Ray Tune checkpoints).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any

from core.point import NO_HOOKS, PointContext
from core.training import select_device
from record.store import store_gone
from record.write import SweepWriter
from tune_jobs.progress import TRACKING_LOST
from tune_jobs.study import load_study


class PointsFailed(RuntimeError):
    """Raised by a Ray trial after all its points ran, when some of them failed."""


class TuneEpochHooks:
    """:class:`core.point.EpochHooks` for a long point: per-epoch MLflow metrics and Ray Tune checkpoints.

    A checkpoint holds the point's state and its MLflow run id, so a retried or
    resumed Ray trial continues from its last epoch in the same MLflow run.
    """

    STATE_FILE = "point_state.pt"

    def __init__(self, writer: SweepWriter, point: str) -> None:
        self.writer = writer
        self.point = point
        self.run_id: str | None = None
        self._state: dict[str, Any] | None = None
        self.resumed_run_id: str | None = None
        self.last_logged: dict[str, float] = {}
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per saved checkpoint
        self._load()

    def _load(self) -> None:
        import torch
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:  # tensors and plain containers only: nothing is executed
            saved = torch.load(os.path.join(folder, self.STATE_FILE), map_location="cpu", weights_only=True)
        if saved["point"] == self.point:
            self._state, self.resumed_run_id = saved["state"], saved["run_id"]

    def restore(self) -> dict[str, Any] | None:
        return self._state

    def epoch_end(self, epoch: int, metrics: dict[str, float], state) -> None:
        import tempfile

        import torch
        from ray import tune

        self.writer.log_step(self.run_id, epoch, metrics)
        self.last_logged = dict(metrics)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"point": self.point, "run_id": self.run_id, "state": state()},
                       os.path.join(folder, self.STATE_FILE))
            tune.report({"point": self.point, "status": "epoch", "epoch": epoch, **metrics},
                        checkpoint=tune.Checkpoint.from_directory(folder))


class PointTimeout(TimeoutError):
    """A point ran longer than ``--point-timeout``."""


class Watchdog:
    """Fails the point running in this thread once it has run ``timeout`` seconds.

    It raises :class:`PointTimeout` in the point's thread (Python code stops at
    its next line); a point stuck in native code for a further ``grace``
    seconds has its run marked FAILED and its worker process ended (the Ray
    trial then errors, and the launch reports it).
    """

    def __init__(self, timeout: float | None, on_stuck, grace: float = 30.0) -> None:
        self.timeout, self.on_stuck, self.grace = timeout, on_stuck, grace
        self._thread_id = threading.get_ident()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> "Watchdog":
        if self.timeout is not None:
            threading.Thread(target=self._watch, name="robustlab-point-timeout", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done.set()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)  # none pending

    def _watch(self) -> None:
        if self._done.wait(self.timeout):
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
    from ray import tune

    trial = trial_config["trial"]
    context = trial["context"]
    uri = context["tracking_uri"]
    study = load_study(context["study"])
    writer = SweepWriter(uri, context["experiment_id"], context["sweep_id"], study.name)
    device = str(select_device("cuda" if context["gpus_per_trial"] > 0 else "cpu"))
    threads = max(1, int(context["cpus_per_trial"]))
    ray_trial = tune.get_context().get_trial_id()
    failures = []
    try:
        earlier = writer.runs_by_point(ray_trial)  # empty unless this Ray trial is retried or restored
        for index, entry in enumerate(trial["points"]):
            config = study.config_type(**entry)
            point = study.point_key(config)
            if any(run.info.status == "FINISHED" for run in earlier.get(point, ())):
                tune.report({"point": point, "status": "skipped", "points_done": index + 1})
                continue
            hooks = TuneEpochHooks(writer, point) if study.checkpoints else None
            run_id = writer.start(point, study.params(config), ray_trial, earlier=earlier.get(point, ()),
                                  resume_run_id=hooks.resumed_run_id if hooks else None)
            try:
                if hooks is not None:
                    hooks.run_id = run_id
                point_context = PointContext(device=device, threads=threads, hooks=hooks or NO_HOOKS)
                with Watchdog(context["point_timeout"], lambda error, run_id=run_id: writer.fail(run_id, error)):
                    result = study.run_point(config, point_context)
                study.check_result(result)
                writer.finish(run_id, result, logged=hooks.last_logged if hooks else None)
            except PointTimeout:
                error = PointTimeout(f"the point ran longer than --point-timeout {context['point_timeout']:g} s")
            except Exception as raised:  # the point fails; the Ray trial's other points go on
                if store_gone(uri):
                    raise
                error = raised
            else:
                tune.report({"point": point, "status": "finished", "points_done": index + 1, **result.metrics})
                continue
            writer.fail(run_id, error)
            failures.append(f"{point}: {type(error).__name__}: {error}")
            tune.report({"point": point, "status": "failed", "points_done": index + 1, "error": str(error)[:500]})
    except Exception as error:
        if store_gone(uri):
            tune.report({"status": TRACKING_LOST, "error": f"{type(error).__name__}: {error}"[:500]})
        raise
    if failures:
        raise PointsFailed(f"{len(failures)} point(s) failed: " + "; ".join(failures))
