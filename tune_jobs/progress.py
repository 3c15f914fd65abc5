"""The launch's console progress, as a Ray Tune callback (imported only once Ray is set up).

The callback is part of the Tuner's saved state, so an experiment restored by
``--resume`` brings it back: it holds no launch-specific numbers, only the
study's metric names, and restarts its clock and counts in :meth:`setup`.
It also ends the Tune run when a Ray trial reports that the tracking store
stopped answering (a Stopper would mark the stopped Ray trials finished, and
a later ``--resume`` would skip their points).
"""

from __future__ import annotations

import time

from ray import tune

from record.store import TrackingLost
from tune_jobs.trial import trial_context, trial_points


#: Points finished before an ETA is shown; it is computed from the points finished after the first one (Ray's and
#: the workers' start-up counted into the first point's time made the first ETA 70x too long).
ETA_AFTER = 3
#: The status a Ray trial reports when the tracking store stopped answering.
TRACKING_LOST = "tracking_lost"
#: The status of one Ray Tune result carrying several points' outcomes (``outcomes``: each as reported alone).
POINTS = "points"


class PointProgress(tune.Callback):
    """One line per finished grid point (and per epoch of long points): ``[done/total elapsed] status point``."""

    def __init__(self, metrics: tuple[str, ...], mode: str = "auto", short_names: dict | None = None,
                 last: tuple[str, ...] = ()) -> None:
        self.metrics = tuple(metrics)
        self.mode = mode  # --progress: auto, points, epochs, none
        self.short_names = dict(short_names or {})
        self.last = tuple(last)
        self.setup()

    def _show_epoch(self, result) -> bool:
        """Whether an epoch gets a line: always with ``epochs``; with ``auto`` for launches of at most FEW_POINTS
        points, every 10 % of a point's epochs (and its last)."""
        from tune_jobs.launch import FEW_POINTS

        mode = getattr(self, "mode", "auto")  # a callback restored from an older launch's saved state
        if mode == "epochs":
            return True
        if mode != "auto" or not self.total or self.total > FEW_POINTS:
            return False
        total = result.get("epochs_total")
        step = max(1, total // 10) if total else 1
        return (result["epoch"] + 1) % step == 0 or (total is not None and result["epoch"] + 1 == total)

    def setup(self, **info) -> None:
        self.start = time.monotonic()
        self.done = 0
        self.total: int | None = None
        self.finished: set[str] = set()  # points reported with a FINISHED run, in this launch
        self.first: tuple[float, int] | None = None  # (when, done) at the first finished point: the ETA's origin

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        for outcome in result["outcomes"] if result.get("status") == POINTS else (result,):
            self._outcome(trials, trial, outcome)

    def _outcome(self, trials, trial, result) -> None:
        status = result.get("status")
        if status is None:
            return
        if status == TRACKING_LOST:  # Tune fails the run; its saved state keeps running Ray trials unfinished
            raise TrackingLost(result.get("error", ""))  # ends the whole Tune run at once
        if self.total is None:  # a restored experiment's finished Ray trials report nothing again
            self.total = trial_context(trial.config).n_points
            self.done = sum(trial_points(t.config) for t in trials if t.status == "TERMINATED")
        if status != "epoch":
            self.done += 1
        if status in ("finished", "skipped"):  # a worker reports a point only once its run is FINISHED
            self.finished.add(result.get("point"))
        if status == "epoch" and not self._show_epoch(result):
            return
        if getattr(self, "mode", "auto") == "none" and status != "failed":
            return
        shown = ", ".join(f"{k}={result[k]:.4g}" for k in self.metrics if isinstance(result.get(k), (int, float)))
        if status == "epoch":  # MLflow's step numbers: epoch 0 is the first (the histories' step)
            total = result.get("epochs_total")
            shown = (f"epoch {result['epoch']}" + (f" (of 0..{total - 1})" if total else "")
                     + (f", {shown}" if shown else ""))
        if status == "failed":
            shown = result.get("error", "")
        print(f"{self._prefix()} {status:8s} {self._name(result.get('point'))}" + (f"  {shown}" if shown else ""),
              flush=True)

    def _name(self, point):
        """A point key as its run name (short names, floats to 4 significant digits)."""
        if not isinstance(point, str):
            return point
        from tune_jobs.study import point_name

        return point_name(point, getattr(self, "short_names", {}), getattr(self, "last", ()))

    def _prefix(self) -> str:
        """``[done/total elapsed, ETA]``: the ETA from the points finished in this launch so far, once
        :data:`ETA_AFTER` of them did (the first points carry Ray's and the workers' start-up)."""
        now = time.monotonic()
        elapsed = now - self.start
        eta = ""
        first = getattr(self, "first", None)
        if first is None and self.done:
            self.first = first = (now, self.done)
        if first is not None and self.total and self.done < self.total and self.done - first[1] >= ETA_AFTER - 1:
            rate = (now - first[0]) / (self.done - first[1])  # seconds per point since the first one finished
            eta = f", ETA {rate * (self.total - self.done):.0f}s"
        return f"[{self.done}/{self.total} {elapsed:6.1f}s{eta}]"


    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A Ray trial a scheduler stopped (its last report was an epoch): its run ends FINISHED, tagged
        ``robustlab.stopped_early`` with the epochs it trained; its checkpoints go."""
        last = trial.last_result or {}
        if last.get("status") != "epoch" or not last.get("run_id"):
            return
        from record.write import SweepWriter

        context = trial_context(trial.config)
        writer = SweepWriter(context.tracking_uri, context.experiment_id, context.sweep_id, "")
        writer.stop_early(last["run_id"], int(last["epochs_done"]))
        self.done += 1
        print(f"{self._prefix()} stopped  {self._name(last.get('point'))}  after {last['epochs_done']} epoch(s) by the scheduler",
              flush=True)
