"""The shared runner: a study's grid points -> Ray trials -> one MLflow run per point, under the sweep's parent.

:func:`main` validates the launch, starts or joins Ray while a thread opens the
sweep's parent run, runs the Tuner over :func:`tune_jobs.worker.run_points`,
then stops Ray and closes the parent with a summary (and runs ``--analyze``).
MLflow (:mod:`record.write`) and the worker module are imported only once
Ray's start-up is under way, so MLflow's ~2 s import overlaps it.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from record import schema
from record.store import TrackingUnavailable, check_reachable, resolve_tracking_uri
from tune_jobs.cli import Launch, UsageError, fail_usage, parse_launch
from tune_jobs.study import load_study, study_ref

if TYPE_CHECKING:
    from record.write import SweepWriter

#: The packages a Ray worker on another node needs (shipped with ``runtime_env``).
PROJECT_PACKAGES = ("core", "record", "analysis", "tune_jobs")


def _trial_slots(launch: Launch) -> int:
    """How many Ray trials the cluster runs at once with the launch's resources per trial."""
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0.0) / launch.cpus_per_trial] if launch.cpus_per_trial > 0 else []
    if launch.gpus_per_trial > 0:
        fits.append(total.get("GPU", 0.0) / launch.gpus_per_trial)
    slots = int(min(fits)) if fits else 1
    if launch.max_concurrent:
        slots = min(slots, launch.max_concurrent)
    return max(slots, 1)


def _plan_trials(points: list[Any], points_per_trial: int, slots: int) -> list[list[Any]]:
    """Consecutive runs of ``points`` as Ray trials: at most ``points_per_trial`` each, but at least one
    trial per slot while there are points to share (no slot idles while another works through a long trial)."""
    if not points:
        return []
    n_trials = min(len(points), max(math.ceil(len(points) / points_per_trial), slots))
    size, longer = divmod(len(points), n_trials)  # sizes differ by at most one
    starts = [i * size + min(i, longer) for i in range(n_trials + 1)]
    return [points[a:b] for a, b in zip(starts, starts[1:])]


def _start_ray(launch: Launch) -> None:
    """Join ``--address`` or start a local Ray on loopback, sized to this machine."""
    if launch.address is None:
        # Read by Ray at import: keep every local Ray port on 127.0.0.1 (Ray binds all interfaces otherwise).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray pre-starts one idle task worker per CPU, which Tune's trial actors never use: ~0.7 s of CPU each.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # MLflow is the record: no per-result JSON/CSV/TensorBoard files from the driver (set it to 0 to get them back).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    # Ray Tune's end-of-run summary of its own result files adds nothing to the MLflow summary printed after it.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if launch.address is None:
        ray.init(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=True)
    else:  # ship the code to every node: no shared filesystem or install of robustlab needed
        ray.init(address=launch.address, logging_level="WARNING",
                 runtime_env={"py_modules": _packages_to_ship(launch.study_ref)})


def _packages_to_ship(ref: str) -> list[str]:
    """Folders of this project's packages, plus the study's own top-level package unless it is installed."""
    names = list(PROJECT_PACKAGES)
    top = ref.partition(":")[0].partition(".")[0]
    if top not in names:
        names.append(top)
    folders = []
    for name in names:
        path = Path(importlib.import_module(name).__file__)
        if name == top and "site-packages" in path.parts:
            continue  # installed on the nodes like any dependency
        folders.append(str(path.parent) if path.name == "__init__.py" else str(path))
    return folders


def _open_sweep(client, launch: Launch, experiment_id: str) -> str:
    """The parent run: a new one, or with ``--resume`` the one to continue."""
    from record.read import find_sweep
    from record.write import create_sweep, reopen_sweep

    study = launch.study
    if launch.resume:
        sweep = find_sweep(client, experiment_id, study.name, None if launch.resume == "latest" else launch.resume)
        if sweep is None:
            raise UsageError(f"--resume: no {study.name} sweep "
                             + ("" if launch.resume == "latest" else f"{launch.resume!r} ")
                             + f"in experiment {launch.experiment!r}")
        prefix = schema.GRID_PREFIX
        recorded = {k[len(prefix):]: v for k, v in sweep.data.params.items() if k.startswith(prefix)}
        requested = {d: schema.encode(v) for d, v in launch.grid.items()}
        if recorded and recorded != requested:
            raise UsageError(f"--resume: sweep {sweep.info.run_id} was launched with grid {recorded}, "
                             f"this command asks for {requested}")
        reopen_sweep(client, sweep.info.run_id)
        return sweep.info.run_id
    return create_sweep(
        client, experiment_id, study=study.name, run_name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        command=" ".join(sys.argv), fixed={k: v for k, v in launch.fixed.items() if k not in study.unlogged_fields},
        grid=launch.grid, n_points=len(launch.points), param_types=study.param_types(),
    )


def _open_tracking(launch: Launch, uri: str) -> tuple[SweepWriter, set[str]]:
    """The sweep's parent run (opened, or found for ``--resume``) and the points it already finished.

    Runs in a thread while Ray starts: the driver's first MLflow import happens here.
    """
    from mlflow.tracking import MlflowClient

    from record.runs import get_or_create_experiment
    from record.write import SweepWriter

    client = MlflowClient(uri)
    experiment_id = get_or_create_experiment(client, launch.experiment, uri)
    sweep = SweepWriter(uri, experiment_id, _open_sweep(client, launch, experiment_id), launch.study.name)
    return sweep, sweep.take_over() if launch.resume else set()


def _check_ray_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail fast, naming the address, when a Ray head at HOST:PORT does not answer."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as error:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({error})") from None


def run_sweep(launch: Launch) -> tuple[int, str]:
    """Run the launch end to end, its ``--analyze`` step included; returns the exit status and the sweep id.

    The status is 0 when every point finished (and the analysis passed), else non-zero.
    """
    study = launch.study
    uri = resolve_tracking_uri(launch.tracking_uri)
    try:
        prepared = study.prepare(launch.points, launch.switches) if study.prepare else launch.points
    except ValueError as error:  # e.g. a user loss that breaks the contract, a missing data folder
        raise UsageError(str(error)) from None
    check_reachable(uri)
    _check_ray_address(launch.address)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the tracking store opens while Ray starts (in this thread)
        opening = pool.submit(_open_tracking, launch, uri)
        try:
            _start_ray(launch)
        finally:
            sweep, finished = opening.result()
    pending = [cfg for cfg in prepared if study.point_key(cfg) not in finished]
    if study.cost is not None:  # longest first: the sweep's tail is a short trial, not a long one
        pending.sort(key=study.cost, reverse=True)
    chunks = _plan_trials([asdict(cfg) for cfg in pending], launch.points_per_trial, _trial_slots(launch))
    print(f"{study.name}: {len(launch.points)} grid points ({len(finished)} already finished) in {len(chunks)} "
          f"Ray trials, tracking {uri}, experiment {launch.experiment!r}, sweep {sweep.sweep_id}", flush=True)

    interrupted = False
    if pending:
        context = {"study": launch.study_ref, "tracking_uri": uri, "experiment_id": sweep.experiment_id,
                   "sweep_id": sweep.sweep_id, "cpus_per_trial": launch.cpus_per_trial,
                   "gpus_per_trial": launch.gpus_per_trial, "n_points": len(pending)}
        trials = [{"context": context, "points": chunk} for chunk in chunks]
        try:
            _run_tuner(launch, _experiment_path(launch, sweep), trials)
        except KeyboardInterrupt:
            interrupted = True
    import ray  # imported by _start_ray, after the loopback switch was set

    # In this thread, with nothing else running: Ray exits the process if its worker is touched mid-shutdown.
    ray.shutdown()
    status = _close_sweep(launch, sweep, interrupted)
    if launch.analyze_out:
        status = status or _analyze(launch, sweep.sweep_id)
    return status, sweep.sweep_id


def _close_sweep(launch: Launch, sweep: SweepWriter, interrupted: bool) -> int:
    """Set the parent run's final status and say how many points finished; 0 when all did, else 1."""
    study = launch.study
    done_points, failed_points = sweep.point_outcomes()
    all_points = {study.point_key(p) for p in launch.points}
    n_done = len(done_points & all_points)
    sweep.close(len(all_points), n_done, interrupted)
    print(f"{study.name}: {n_done}/{len(all_points)} grid points finished in sweep {sweep.sweep_id} "
          f"(experiment id {sweep.experiment_id})", flush=True)
    if n_done == len(all_points):
        return 0
    missing = len(all_points) - n_done
    print(f"{study.name}: {missing} grid point(s) did not finish ({len(failed_points)} failed: see the FAILED point "
          f"runs' '{schema.TAG_ERROR}' tag and {schema.TRACEBACK_ARTIFACT} artifact); continue with --resume "
          f"{sweep.sweep_id}", flush=True)
    return 1


def _analyze(launch: Launch, sweep_id: str) -> int:
    """``--analyze DIR``: the study's analysis and validation of this sweep; its exit status."""
    from analysis.common import run_analysis

    argv = ["--experiment", launch.experiment, "--sweep-id", sweep_id, "--out", launch.analyze_out, "--validate"]
    if launch.tracking_uri:
        argv += ["--tracking-uri", launch.tracking_uri]
    return run_analysis(launch.study.analysis, launch.study.name, argv)


def _experiment_path(launch: Launch, sweep: SweepWriter) -> str:
    """Where Ray Tune keeps this sweep's state: recorded on the parent run so ``--resume`` finds it."""
    recorded = sweep.ray_experiment()
    if launch.resume and recorded:
        return recorded
    storage = os.path.abspath(launch.storage_path or os.path.expanduser("~/ray_results"))
    path = os.path.join(storage, f"{launch.study.name}-{sweep.sweep_id}"
                        + (f"-{int(time.time())}" if launch.resume else ""))
    sweep.record_ray_experiment(path)
    return path


def _trial_name(trial) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def _run_tuner(launch: Launch, experiment_path: str, trials: list[dict]) -> None:
    """Run the trials as a Ray Tune experiment at ``experiment_path``.

    If that experiment exists (a ``--resume`` on the machine that ran it), Ray
    Tune restores it: finished trials stay finished, interrupted and errored
    ones continue from their last checkpoint.  The progress callback is part
    of the restored state (see :mod:`tune_jobs.progress`).
    """
    from ray import tune

    from tune_jobs.progress import PointProgress
    from tune_jobs.worker import run_points

    study = launch.study
    trainable = tune.with_resources(run_points, {"cpu": launch.cpus_per_trial, "gpu": launch.gpus_per_trial})
    if launch.resume and tune.Tuner.can_restore(experiment_path):
        print(f"restoring the Ray Tune experiment {experiment_path}", flush=True)
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=launch.max_concurrent, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=os.path.basename(experiment_path), storage_path=os.path.dirname(experiment_path),
                verbose=0, callbacks=[PointProgress(study.metrics)],
                failure_config=tune.FailureConfig(max_failures=launch.max_failures),
            ),
        )
    tuner.fit()


def main(ref: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tune_jobs STUDY``: ``ref`` is a built-in name, ``module`` or ``module:ATTR``."""
    try:
        try:
            study, canonical = load_study(ref), study_ref(ref)
        except ValueError as error:  # an unknown name, a module that is not there, no Study in it
            raise UsageError(str(error)) from None
        launch = parse_launch(study, argv, canonical)
        status, _ = run_sweep(launch)
    except (UsageError, TrackingUnavailable) as error:
        fail_usage(str(error))
    return status
