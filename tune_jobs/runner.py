"""A launch, phase by phase: a study's grid points -> Ray trials -> one MLflow run per point, under the sweep's
parent run.

:func:`run_sweep` prepares the points, opens the sweep's record while Ray starts
(:mod:`tune_jobs.opening`, :mod:`tune_jobs.ray_env`), checks the cluster, runs
the Ray trials (:mod:`tune_jobs.tuner`, :mod:`tune_jobs.worker`), stops Ray and
closes the sweep with a summary, then runs ``--analyze``. MLflow and the worker
module are imported only once Ray's start-up is under way, so MLflow's import
overlaps it.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from record import schema
from record.runs import ui_link
from record.store import (StoreError, StoreReplaced, TrackingLost, TrackingUnavailable, check_permission,
                          check_reachable, check_store, prepare_store, private_folder, sqlite_path)
from tune_jobs.cli import parse_launch
from tune_jobs.launch import Launch, UsageError, fail_usage
from tune_jobs.opening import abandon, open_tracking
from tune_jobs.provenance import provenance_tags
from tune_jobs.ray_env import (check_cluster_storage, check_ray_address, check_resources, set_private_defaults,
                               start_ray, trial_slots)
from tune_jobs.study import load_study, study_ref
from tune_jobs.trial import TrialContext
from tune_jobs.tuner import experiment_path, grid_space, run_tuner, search_space

if TYPE_CHECKING:
    from record.write import SweepWriter


def _prepare(launch: Launch) -> Launch:
    """The launch with its points as the study's ``prepare`` returns them (a searched key's bounds are prepared
    too: a loss hyperparameter the loss lacks fails here, not in Ray); a ``ValueError`` is a usage error."""
    if launch.study.prepare is None:
        return launch
    try:
        prepared = launch.study.prepare(launch.points + list(launch.search.bounds), launch.switches)
    except ValueError as error:  # e.g. a user loss that breaks the contract, a missing data folder
        raise UsageError(str(error)) from None
    return dataclasses.replace(launch, points=prepared[:len(launch.points)])


def _open_while_ray_starts(launch: Launch, identity: tuple[int, int] | None) -> tuple[SweepWriter, set[str], object]:
    """Open the sweep's record and start Ray; a new sweep opens in a thread while Ray starts (in this thread),
    a resumed one first (its lease and the record's checks come before anything starts)."""
    if launch.tracking.resume:
        sweep, finished, lease = open_tracking(launch, identity)
        try:
            start_ray(launch)
        except BaseException as error:
            abandon(sweep, lease, error)
            raise
        return sweep, finished, lease
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(open_tracking, launch, identity)
        try:
            start_ray(launch)
        except BaseException as error:
            opened, _, held = opening.result()
            abandon(opened, held, error)
            raise
        return opening.result()


def _trial_context(launch: Launch, sweep: SweepWriter, identity: tuple[int, int] | None = None) -> TrialContext:
    compute, outputs = launch.compute, launch.outputs
    return TrialContext(
        study=launch.study_ref, tracking_uri=launch.tracking.uri, experiment_id=sweep.experiment_id,
        sweep_id=sweep.sweep_id, n_points=launch.n_points, cpus_per_trial=compute.cpus_per_trial,
        gpus_per_trial=compute.gpus_per_trial, point_timeout=compute.point_timeout, log_models=outputs.log_models,
        checkpoint_every=outputs.checkpoint_every, keep_checkpoints=outputs.keep_checkpoints,
        system_metrics=outputs.system_metrics, point_dims=launch.point_dims,
        space_keys=tuple(d.key for d in launch.search.space), store_identity=identity,
        single_dims=tuple(d for d, values in launch.grid.items() if len(values) == 1),
        epoch_reports=launch.search.scheduler != "fifo", metric=launch.search.metric,
        provenance={k: v for k, v in provenance_tags(launch.study_ref, launch.argv).items()
                    if k != schema.TAG_COMMAND})


def _run_trials(launch: Launch, sweep: SweepWriter, finished: set[str], storage: Path,
                identity: tuple[int, int] | None = None):
    """Print what the launch runs, then run it; the tracking error that ended it (or None) and the points its Ray
    trials reported FINISHED (None when not known)."""
    study, context = launch.study, _trial_context(launch, sweep, identity)
    where = f"tracking {launch.tracking.uri}, experiment {launch.tracking.experiment!r}, sweep {sweep.sweep_id}"
    if launch.searching:
        print(f"{study.name}: {launch.n_points} points ({launch.search.describe()}; {len(finished)} already "
              f"finished), one per Ray trial, {where}", flush=True)
        return run_tuner(launch, experiment_path(launch, sweep, storage), search_space(launch, context), identity)
    pending = [cfg for cfg in launch.points if launch.point_key(cfg) not in finished]
    if study.cost is not None:  # longest first: the sweep's tail is a short trial, not a long one
        pending.sort(key=study.cost, reverse=True)
    space = grid_space(launch, dataclasses.replace(context, n_points=len(pending)), pending, trial_slots(launch))
    print(f"{study.name}: {len(launch.points)} grid points ({len(finished)} already finished) in "
          f"{space.n_trials} Ray trials, {where}", flush=True)
    if not pending:
        return None, set(finished)
    lost, reported = run_tuner(launch, experiment_path(launch, sweep, storage), space, identity)
    return lost, None if reported is None else reported | finished


def run_sweep(launch: Launch) -> tuple[int, str]:
    """Run the launch end to end, its ``--analyze`` step included; returns the exit status and the sweep id.

    The status is 0 when every point finished (and the analysis passed), else non-zero.
    """
    launch = _prepare(launch)
    uri = launch.tracking.uri
    storage = private_folder(Path(launch.compute.storage_path or "~/ray_results").expanduser().absolute(),
                             "--storage-path")
    set_private_defaults(launch.tracking.timeout)
    check_reachable(uri)
    check_permission(uri, launch.tracking.experiment)
    identity = prepare_store(uri)  # a SQLite store's file: the workers and the end of the launch check it is still it
    check_ray_address(launch.compute.address)
    sweep, finished, lease = _open_while_ray_starts(launch, identity)
    import ray  # imported by start_ray, after the loopback switch was set

    interrupted, lost, reported = False, None, None
    try:
        check_resources(launch)
        check_cluster_storage(launch, sweep)
        try:
            lost, reported = _run_trials(launch, sweep, finished, storage, identity)
        except KeyboardInterrupt:
            interrupted = True
    except BaseException as error:
        ray.shutdown()
        abandon(sweep, lease, error)
        raise
    # In this thread, with nothing else running: Ray exits the process if its worker is touched mid-shutdown.
    ray.shutdown()
    try:  # nothing is claimed, nor written, for a SQLite store that is no longer the file the launch opened
        check_store(uri, identity)
    except StoreReplaced as error:
        raise TrackingLost(f"{error}: sweep {sweep.sweep_id} and the runs written to it cannot be read back from "
                           f"{sqlite_path(uri)} (a run written after that went to a file no one can open); nothing "
                           "is recorded as finished. Restore the file to continue with --resume "
                           f"{sweep.sweep_id}, or start a new sweep") from None
    if lost is not None:
        raise TrackingLost(f"the tracking store {uri} stopped answering ({lost}); the launch stopped. Nothing is "
                           f"lost: every point whose run is FINISHED there is recorded, the others run again with "
                           f"--resume {sweep.sweep_id} once the store answers")
    lease.release()
    status = _close_sweep(launch, sweep, interrupted, reported)
    if launch.outputs.analyze_out:
        status = status or _analyze(launch, sweep.sweep_id)
    return status, sweep.sweep_id


def _close_sweep(launch: Launch, sweep: SweepWriter, interrupted: bool, reported: set[str] | None = None) -> int:
    """Set the parent run's final status and say how many points finished; 0 when all did, else 1.

    ``reported``: the points this launch's Ray trials reported FINISHED; when they are all of the grid, the
    record is not read back (at 10,000 points that read takes seconds), else it is the judge.
    """
    study = launch.study
    ended = sweep.end_orphans("KILLED" if interrupted else "FAILED",
                              "the launch was interrupted while this point ran" if interrupted else
                              "the Ray trial computing this point ended without finishing it (its worker died?)")
    if ended:
        print(f"{study.name}: {ended} point run(s) whose Ray trial ended early marked "
              f"{'KILLED' if interrupted else 'FAILED'}", flush=True)
    all_points = {launch.point_key(p) for p in launch.points}
    if not launch.searching and reported is not None and all_points <= reported:
        done_points, failed_points = all_points, set()  # no need to read every run back
    else:
        done_points, failed_points = sweep.point_outcomes()
    if launch.searching or launch.search.metric:
        _report_search(launch, sweep)
    if launch.searching:
        n_all, n_done = launch.n_points, min(len(done_points), launch.n_points)
    else:
        n_all, n_done = len(all_points), len(done_points & all_points)
    sweep.close(n_all, n_done, interrupted)
    print(f"{study.name}: {n_done}/{n_all} {'' if launch.searching else 'grid '}points finished in sweep "
          f"{sweep.sweep_id} (experiment id {sweep.experiment_id}); MLflow UI: "
          f"{ui_link(launch.tracking.uri, sweep.experiment_id)}", flush=True)
    rerun = provenance_tags(launch.study_ref, launch.argv)[schema.TAG_RERUN]
    print(f"{study.name}: to run this launch again, from any folder: {rerun}", flush=True)
    if n_done == n_all:
        return 0
    failed = (f" ({len(failed_points)} failed: see the FAILED point runs' '{schema.TAG_ERROR}' tag and "
              f"{schema.TRACEBACK_ARTIFACT} artifact)") if failed_points else ""
    print(f"{study.name}: {n_all - n_done} grid point(s) did not finish{failed}; continue with --resume "
          f"{sweep.sweep_id}", flush=True)
    return 1


def _report_search(launch: Launch, sweep: SweepWriter) -> None:
    """After a search: how much early stopping saved, and the best complete point (on the parent run, printed)."""
    from record.read import SweepNotFound, read_sweep

    search, name = launch.search, launch.study.name
    try:
        record = read_sweep(launch.tracking.experiment, launch.tracking.uri, sweep.sweep_id, study=name)
    except SweepNotFound:
        return
    if search.scheduler != "fifo":
        saved = record.early_stopping()
        print(f"{name}: the scheduler stopped {saved.n_stopped} of {saved.n_points} points early; "
              f"{saved.untrained_epochs} of {saved.planned_epochs} planned epochs not trained "
              f"({saved.untrained_epochs / max(saved.planned_epochs, 1):.0%})", flush=True)
    best = record.best_point(search.metric, search.mode) if search.metric else None
    if best is None:
        return
    keys = [d.key for d in search.space] + [d for d in launch.study.grid if len(launch.grid[d]) > 1]
    values = {k: best.params[k] for k in keys if k in best.params}
    sweep.record_best(best.run_id, search.metric, best.value, values)
    shown = " ".join(f"{k}={schema.encode(v)}" for k, v in values.items())
    print(f"{name}: best point by {search.metric} ({search.mode}): {search.metric}={best.value:.4g}  {shown}  "
          f"(run {best.run_id})", flush=True)


def _analyze(launch: Launch, sweep_id: str) -> int:
    """``--analyze DIR``: the study's analysis and validation of this sweep; its exit status."""
    from analysis.common import run_analysis
    from record.read import SweepNotFound, read_sweep

    try:
        sweep = read_sweep(launch.tracking.experiment, launch.tracking.uri, sweep_id, study=launch.study.name)
    except SweepNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_analysis(launch.study.analysis, sweep, Path(launch.outputs.analyze_out), validate=True, log=True,
                        provenance=provenance_tags(launch.study_ref, launch.argv))


def main(ref: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tune_jobs STUDY``: ``ref`` is a built-in name, ``module`` or ``module:ATTR``."""
    try:
        try:
            study, canonical = load_study(ref), study_ref(ref)
        except ValueError as error:  # an unknown name, a module that is not there, no Study in it
            raise UsageError(str(error)) from None
        launch = parse_launch(study, argv, canonical)
        status, _ = run_sweep(launch)
    except (UsageError, TrackingUnavailable, StoreError) as error:
        fail_usage(str(error))
    except TrackingLost as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    return status

