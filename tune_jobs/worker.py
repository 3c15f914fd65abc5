"""The Ray side of a sweep: a Tune function trainable (a Ray trial) computing a few grid points, one MLflow run each.

Points an earlier attempt of the same Ray trial already finished are skipped,
so retries and restores never duplicate a point; checkpointing studies get
:class:`TuneEpochHooks` (per-epoch MLflow metrics and Ray Tune checkpoints).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from core.point import NO_HOOKS, PointContext
from core.training import select_device
from record.write import SweepWriter
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
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, self.STATE_FILE), map_location="cpu", weights_only=False)
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


def run_points(trial_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: compute the Ray trial's grid points, one MLflow run each."""
    from ray import tune

    trial = trial_config["trial"]
    context = trial["context"]
    study = load_study(context["study"])
    writer = SweepWriter(context["tracking_uri"], context["experiment_id"], context["sweep_id"], study.name)
    device = str(select_device("cuda" if context["gpus_per_trial"] > 0 else "cpu"))
    threads = max(1, int(context["cpus_per_trial"]))
    ray_trial = tune.get_context().get_trial_id()
    earlier = writer.runs_by_point(ray_trial)  # empty unless this Ray trial is retried or restored
    failures = []
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
            result = study.run_point(config, PointContext(device=device, threads=threads, hooks=hooks or NO_HOOKS))
            study.check_result(result)
            writer.finish(run_id, result, logged=hooks.last_logged if hooks else None)
        except Exception as error:  # the point fails; the Ray trial's other points go on
            writer.fail(run_id, error)
            failures.append(f"{point}: {type(error).__name__}: {error}")
            tune.report({"point": point, "status": "failed", "points_done": index + 1, "error": str(error)[:500]})
            continue
        tune.report({"point": point, "status": "finished", "points_done": index + 1, **result.metrics})
    if failures:
        raise PointsFailed(f"{len(failures)} point(s) failed: " + "; ".join(failures))
