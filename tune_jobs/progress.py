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


#: The status a Ray trial reports when the tracking store stopped answering.
TRACKING_LOST = "tracking_lost"
#: The status of one Ray Tune result carrying several points' outcomes (``outcomes``: each as reported alone).
POINTS = "points"


class PointProgress(tune.Callback):
    """One line per finished grid point (and per epoch of long points): ``[done/total elapsed] status point``."""

    def __init__(self, metrics: tuple[str, ...]) -> None:
        self.metrics = tuple(metrics)
        self.setup()

    def setup(self, **info) -> None:
        self.start = time.monotonic()
        self.done = 0
        self.total: int | None = None
        self.finished: set[str] = set()  # points reported with a FINISHED run, in this launch

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
        shown = ", ".join(f"{k}={result[k]:.4g}" for k in self.metrics if isinstance(result.get(k), (int, float)))
        if status == "epoch":
            total = result.get("epochs_total")
            shown = f"epoch {result['epoch'] + 1}" + (f"/{total}" if total else "") + (f", {shown}" if shown else "")
        if status == "failed":
            shown = result.get("error", "")
        print(f"{self._prefix()} {status:8s} {result.get('point')}" + (f"  {shown}" if shown else ""), flush=True)

    def _prefix(self) -> str:
        """``[done/total elapsed, ETA]``: the ETA from the points finished so far (none before the first)."""
        elapsed = time.monotonic() - self.start
        eta = ""
        if self.done and self.total and self.done < self.total:
            eta = f", ETA {elapsed / self.done * (self.total - self.done):.0f}s"
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
        print(f"{self._prefix()} stopped  {last.get('point')}  after {last['epochs_done']} epoch(s) by the scheduler",
              flush=True)
