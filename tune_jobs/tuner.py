"""Ray Tune's side of a launch: the points as Ray trials (a packed grid, or a search's samples), one Tuner built
or restored for either, and where its state lives."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from record.store import tracking_lost
from tune_jobs.launch import Launch, UsageError
from tune_jobs.trial import TrialContext, grid_trial, pack_point

if TYPE_CHECKING:
    from record.write import SweepWriter


@dataclass
class TrialSpace:
    """What a Tuner runs: the trainable, its param space, and the search and scheduler (None for a grid)."""

    trainable: Callable[[dict[str, Any]], None]
    param_space: dict[str, Any]
    tune_config: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = None  # a grid's Ray trials (a search's are num_samples x its grid points)


def plan_trials(points: list[Any], points_per_trial: int, slots: int) -> list[list[Any]]:
    """Consecutive runs of ``points`` as Ray trials: at most ``points_per_trial`` each, but at least one
    trial per slot while there are points to share (no slot idles while another works through a long trial)."""
    if not points:
        return []
    n_trials = min(len(points), max(math.ceil(len(points) / points_per_trial), slots))
    size, longer = divmod(len(points), n_trials)  # sizes differ by at most one
    starts = [i * size + min(i, longer) for i in range(n_trials + 1)]
    return [points[a:b] for a, b in zip(starts, starts[1:])]


def grid_space(launch: Launch, context: TrialContext, pending: list[Any], slots: int) -> TrialSpace:
    """The pending grid points packed into Ray trials (Ray Tune's ``grid_search`` over them)."""
    from ray import tune

    from tune_jobs.worker import run_points

    chunks = plan_trials([pack_point(c) for c in pending], launch.compute.points_per_trial, slots)
    return TrialSpace(run_points, {"trial": tune.grid_search([grid_trial(context, c) for c in chunks])},
                      n_trials=len(chunks))


def search_space(launch: Launch, context: TrialContext) -> TrialSpace:
    """A search (or a scheduled grid) as Ray Tune sees it: the grid points as ``grid_search`` over ``base``, each
    searched key as Ray Tune's sampler, ``num_samples``, and the search algorithm and scheduler asked for. One
    point per Ray trial; points with a FINISHED run are skipped by the trial that draws them again."""
    from ray import tune

    from tune_jobs.worker import run_search_point

    search = launch.search
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=search.metric, mode=search.mode, seed=search.seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Ray Tune ignores max_concurrent_trials with a SearchGenerator: --max-concurrent is its own setting here
        search_alg = BasicVariantGenerator(random_state=search.seed, max_concurrent=launch.compute.max_concurrent or 0)
    scheduler = None
    if search.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # max_t far beyond any epoch count: the rungs are grace x factor^k; ASHA never stops a point's last epoch
        scheduler = ASHAScheduler(time_attr="epochs_done", metric=search.metric, mode=search.mode, max_t=10**6,
                                  grace_period=search.grace_period, reduction_factor=search.reduction_factor)
    bases = [pack_point(c) for c in launch.points]
    param_space = {"context": context, "base": tune.grid_search(bases) if len(bases) > 1 else bases[0],
                   **{d.key: d.to_tune() for d in search.space}}
    limit = {} if search.algorithm == "optuna" else {"max_concurrent_trials": None}  # set on the generator
    return TrialSpace(run_search_point, param_space,
                      {"search_alg": search_alg, "scheduler": scheduler, "num_samples": search.num_samples, **limit})


def experiment_path(launch: Launch, sweep: SweepWriter, storage: Path) -> str:
    """Where Ray Tune keeps this sweep's state: derived from ``--storage-path`` and the sweep id, never read
    back from the record (a tag anyone with access to the tracking store could point elsewhere)."""
    path = storage / f"{launch.study.name}-{sweep.sweep_id}"
    sweep.record_ray_experiment(str(path))  # for people; the launcher never reads it
    return str(path)


def _check_private(path: Path) -> None:
    """Ray Tune unpickles its experiment state: restore only from a folder (and files) this user owns and
    nobody else can write."""
    for item in (path, *path.iterdir()):
        info = item.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise UsageError(f"--resume: Ray Tune's state {item} is not private (owner uid {info.st_uid}, mode "
                             f"{oct(info.st_mode & 0o777)}); refusing to unpickle it. Make it yours (chmod go-w) "
                             "or remove the folder to resume from the MLflow record alone")


def _trial_name(trial) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def run_tuner(launch: Launch, path: str, space: TrialSpace,
              identity: tuple[int, int] | None = None) -> tuple[str | None, set[str] | None]:
    """Run ``space`` as the Ray Tune experiment at ``path``.

    With ``--resume`` and that experiment on this machine, Ray Tune restores it (its searcher's state with it):
    finished trials stay finished, interrupted and errored ones continue from their last checkpoint, and the
    progress callback is part of the restored state (:mod:`tune_jobs.progress`). A search cannot resume without
    it. Returns the error if the tracking store stopped answering (which ends the run), else None, and the points
    the Ray trials reported FINISHED (None for a restored experiment, whose callback is its own). ``identity``: the
    SQLite store's file the launch created (another file there is a store gone).
    """
    from ray import tune

    from tune_jobs.progress import PointProgress

    trainable = tune.with_resources(space.trainable, {"cpu": launch.compute.cpus_per_trial,
                                                      "gpu": launch.compute.gpus_per_trial})
    progress = None
    if launch.tracking.resume and tune.Tuner.can_restore(path):
        _check_private(Path(path))
        print(f"restoring the Ray Tune experiment {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    elif launch.tracking.resume and launch.searching:
        raise UsageError(f"--resume of a search sweep needs Ray Tune's state at {path} (the searcher's samples and "
                         "state live there) and it is not there; start a new sweep")
    else:
        progress = PointProgress(launch.study.metrics, launch.outputs.progress, dict(launch.study.short_names),
                                 tuple(d for d, values in launch.grid.items() if len(values) == 1))
        tuner = tune.Tuner(
            trainable, param_space=space.param_space,
            tune_config=tune.TuneConfig(**{"max_concurrent_trials": launch.compute.max_concurrent, **space.tune_config},
                                        reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=os.path.basename(path), storage_path=os.path.dirname(path), verbose=0, callbacks=[progress],
                failure_config=tune.FailureConfig(max_failures=launch.compute.max_failures)),
        )
    try:
        tuner.fit()
    except Exception as error:  # a Ray trial lost the tracking store (the callback ended the run), or worse
        if not tracking_lost(launch.tracking.uri, identity):
            raise
        return lost_reason(error), None
    return None, (progress.finished if progress is not None else None)


def lost_reason(error: BaseException) -> str:
    """What a Ray trial said when it lost the tracking store, from the error Ray Tune ends the run with (its text is
    a whole traceback: the worker's report, else the traceback's last line, says what happened)."""
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    for line in reversed(lines):
        if "TrackingLost:" in line and line.partition("TrackingLost:")[2].strip():
            return line.partition("TrackingLost:")[2].strip()[:500]
    told = [line for line in lines if not line.startswith(("Traceback", "File ", "^", "~")) and ":" in line]
    return (told[-1] if told else lines[-1] if lines else type(error).__name__)[:500]
