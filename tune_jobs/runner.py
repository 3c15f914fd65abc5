"""The shared runner: a study's grid points -> Ray trials -> one MLflow run per point, under the sweep's parent.

:func:`main` validates the launch, starts or joins Ray while a thread opens the
sweep's parent run, runs the Tuner over :func:`tune_jobs.worker.run_points`,
then stops Ray and closes the parent with a summary (and runs ``--analyze``).
MLflow (:mod:`record.write`) and the worker module are imported only once
Ray's start-up is under way, so MLflow's ~2 s import overlaps it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from record import TELEMETRY_OFF, schema
from record.runs import ui_link
from record.store import (StoreError, StoreReplaced, TrackingUnavailable, check_reachable, check_store,
                          prepare_store, private_folder, sqlite_path, store_gone, store_identity, store_lock)
from tune_jobs.cli import Launch, UsageError, fail_usage, parse_launch
from tune_jobs.provenance import provenance_tags
from tune_jobs.space import Shared
from tune_jobs.study import load_study, study_ref

if TYPE_CHECKING:
    from record.lease import Lease
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


def local_ray_settings() -> None:
    """The environment a local Ray is started with (each setting only if the user set none)."""
    # Read by Ray at import: keep every local Ray port on 127.0.0.1 (Ray binds all interfaces otherwise).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray pre-starts one idle task worker per CPU, which Tune's trial actors never use: ~0.7 s of CPU each.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # Token authentication, as a local Ray has by default, said explicitly: Ray then skips its start-up warning.
    # Ray reads it at import: a process that imported Ray before (a notebook, a test) keeps its own setting,
    # which its local Ray's processes then inherit (a driver and a GCS that disagree cannot talk).
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        # Ray's v1 autoscaler monitor answers ray.shutdown's SIGTERM by writing to the GCS that Ray stopped
        # first, and is killed a second later: every launch waited 1 s for it. The v2 monitor stops at once.
        # Its events are noise on one machine (pending Ray trials read as "no node type fits them"); the
        # driver reads that switch at import, hence both only here.
        os.environ.setdefault("RAY_enable_autoscaler_v2", "1")
        os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")


#: ``ray.init``'s arguments for a local Ray.
LOCAL_RAY_INIT = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING",
                  "log_to_driver": True}


def _start_ray(launch: Launch) -> None:
    """Join ``--address`` or start a local Ray on loopback, sized to this machine."""
    if launch.address is None:
        local_ray_settings()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Tune's console output (a configuration box, a pointer to its own result files) tells nothing MLflow and
    # the launcher's progress lines do not; trial errors are still logged.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow is the record: no per-result JSON/CSV/TensorBoard files from the driver (set it to 0 to get them back).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ctrl-C is a KeyboardInterrupt here (Tune's own handler ends the run as if it had completed): the launch
    # stops at once and ends the parent and the in-flight runs KILLED.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    import ray

    # Ray Tune's end-of-run summary of its own result files adds nothing to the MLflow summary printed after it.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if launch.address is None:
        ray.init(**LOCAL_RAY_INIT)
    else:  # ship the code (and the launch's private defaults) to every node: no shared filesystem or install
        try:
            ray.init(address=launch.address, logging_level="WARNING",
                     runtime_env={"py_modules": _packages_to_ship(launch.study_ref),
                                  "env_vars": {k: os.environ[k] for k in PRIVATE_DEFAULTS if k in os.environ}})
        except ConnectionError as error:
            raise UsageError(f"--address {launch.address}: no Ray cluster answers ({error})") from None


#: Off unless the user turns them on: Ray's usage statistics and MLflow's telemetry.
PRIVATE_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "", "MLFLOW_HTTP_REQUEST_TIMEOUT": ""}


def set_private_defaults(tracking_timeout_s: float) -> None:
    """Telemetry off, and MLflow's HTTP retries bounded by ``tracking_timeout_s`` (each only if the user set none).

    MLflow retries a request with exponential backoff (urllib3: no wait, then
    2, 4, 8, ... s). Up to 7 retries (MLflow's own default) take waits of at
    most a third of the bound (5 retries, 30 s of waits at the default 120 s:
    a server restarted within ~30 s loses nothing); the rest is shared by the
    attempts' own timeouts.
    """
    retries = max(r for r in range(8) if 2 ** r - 2 <= tracking_timeout_s / 3)
    per_request = max(1, int((tracking_timeout_s - (2 ** retries - 2)) / (retries + 1)))
    bound = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_request)}
    for key, value in (PRIVATE_DEFAULTS | bound).items():
        if key not in TELEMETRY_OFF:  # record's own rule (both off unless the user set either)
            os.environ.setdefault(key, value)


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


def _open_sweep(client, launch: Launch, experiment_id: str) -> tuple[str, Lease]:
    """The parent run and its lease: a new sweep, or with ``--resume`` the one to continue (if no launch holds it).

    A resumed sweep is reopened (RUNNING) only after every check passed: a refused ``--resume`` leaves it as it was.
    """
    from record.read import find_sweep
    from record.lease import Lease, LeaseHeld
    from record.write import SweepWriter, create_sweep, reopen_sweep

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
        lease = Lease(client, sweep.info.run_id)
        try:
            note = lease.acquire(force=launch.force)
        except LeaseHeld as held:
            raise UsageError(f"--resume: {held}; wait for it to end, or pass --force if that machine is dead") from None
        if note:
            print(f"{study.name}: {note}", flush=True)
        try:
            _check_unchanged(launch, SweepWriter(launch.tracking_uri, experiment_id, sweep.info.run_id, study.name))
        except UsageError:
            lease.release()
            raise
        reopen_sweep(client, sweep.info.run_id)
        return sweep.info.run_id, lease
    provenance = provenance_tags(launch.study_ref, launch.argv)
    sweep_id = create_sweep(
        client, experiment_id, study=study.name, run_name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        command=provenance[schema.TAG_COMMAND], provenance=provenance,
        note=f"**{study.name}**: {study.description}", fixed={**{k: v for k, v in launch.fixed.items() if k not in study.unlogged_fields},
                                           **{f"{prefix}.{name}": value for prefix, field in study.open_params.items()
                                              for name, value in launch.fixed.get(field, ())},
                                           **_search_params(launch)},
        grid=launch.grid, n_points=launch.n_points, param_types=study.param_types(),
    )
    lease = Lease(client, sweep_id)
    lease.acquire(settle_s=0)
    return sweep_id, lease


def _search_params(launch: Launch) -> dict[str, Any]:
    """A search's settings as the parent run's params (none for a plain grid)."""
    if launch.search == "grid" and launch.scheduler == "fifo":
        return {}
    params = {"search": launch.search, "num_samples": launch.num_samples, "search_seed": launch.search_seed,
              "scheduler": launch.scheduler, **{f"space.{d.key}": d.describe() for d in launch.space}}
    if launch.metric:
        params.update(metric=launch.metric, mode=launch.mode)
    if launch.scheduler == "asha":
        params.update(grace_period=launch.grace_period, reduction_factor=launch.reduction_factor)
    return params


def _open_tracking(launch: Launch, uri: str,
                   identity: tuple[int, int] | None = None) -> tuple[SweepWriter, set[str], Lease]:
    """The sweep's parent run (opened, or found for ``--resume``), the points it already finished, its lease.

    For a new sweep this runs in a thread while Ray starts (the driver's first
    MLflow import happens here); a small artifact on the parent proves the
    artifact store takes writes before any point trains.
    """
    from record.runs import get_or_create_experiment, open_client
    from record.write import SweepWriter, check_artifacts

    with store_lock(uri):  # a new SQLite store's tables are created once (by the client), not by two at a time
        client = open_client(uri)  # ...and a process that is no launch creating them meanwhile is waited for
        experiment_id = get_or_create_experiment(client, launch.experiment, uri)
    sweep_id, lease = _open_sweep(client, launch, experiment_id)
    sweep = SweepWriter(uri, experiment_id, sweep_id, launch.study.name)
    try:
        check_artifacts(client, sweep_id)
        finished = sweep.take_over() if launch.resume else set()
    except Exception as error:
        _abandon(sweep, lease, error)
        raise
    lease.keep(uri, (lambda: store_identity(uri) == identity) if identity is not None else (lambda: True))
    return sweep, finished, lease


def _check_unchanged(launch: Launch, sweep: SweepWriter) -> None:
    """``--resume``: a point's params must be those its earlier runs recorded (a changed loss file's SHA-256
    among them): the code a resumed point runs is the code the user passes now, checked against the record."""
    recorded = sweep.recorded_params()
    for config in launch.points:
        before = recorded.get(launch.study.point_key(config, launch.point_dims))
        if before is None:
            continue
        now = {k: schema.encode(v) for k, v in launch.study.params(config).items()}
        changed = sorted(k for k in now if k in before and before[k] != now[k])
        if changed:
            key = changed[0]
            raise UsageError(f"--resume: point {launch.study.point_key(config, launch.point_dims)} was run with {key}={before[key]}, "
                             f"this command gives {key}={now[key]}; resume with the same inputs, or start a new sweep")


def _check_ray_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail fast, naming the address, when a Ray head at HOST:PORT does not answer."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as error:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({error})") from None


def _check_resources(launch: Launch) -> None:
    """A Ray trial's CPUs and GPUs must fit on one alive node (else Ray waits forever); ``--wait-for-resources``
    skips this for a cluster whose autoscaler adds nodes."""
    import ray

    if launch.wait_for_resources:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= launch.cpus_per_trial and n.get("GPU", 0) >= launch.gpus_per_trial for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise UsageError(f"no node of the Ray cluster can hold a Ray trial of {launch.cpus_per_trial:g} CPU(s) and "
                     f"{launch.gpus_per_trial:g} GPU(s) (the largest node has {largest.get('CPU', 0):g} CPU(s), "
                     f"{largest.get('GPU', 0):g} GPU(s)); lower --cpus-per-trial / --gpus-per-trial, or pass "
                     "--wait-for-resources for a cluster that adds nodes")


def _check_cluster_storage(launch: Launch, sweep: SweepWriter) -> None:
    """On a cluster, every node must reach the record: runs, metrics and checkpoints (artifacts) go through the
    tracking URI, so a SQLite file or a local artifact folder on this machine cannot work; exit 2 saying what to pass.
    """
    import ray

    here = ray.util.get_node_ip_address()
    others = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - {here})
    if not others:
        return
    server = ("start a tracking server every node reaches (python -m tune_jobs.tracking_server --host HOST serves "
              "artifacts through itself) and pass --tracking-uri http://HOST:5000")
    if not launch.tracking_uri.startswith(("http://", "https://")):
        raise UsageError(f"the Ray cluster has nodes other than this one ({', '.join(others)}), which cannot reach "
                         f"the tracking store {launch.tracking_uri}: {server}")
    location = sweep.client.get_run(sweep.sweep_id).info.artifact_uri
    if location.startswith(("file:", "/")):
        raise UsageError(f"the tracking server keeps artifacts (checkpoints, models) at {location}, a folder "
                         f"other nodes ({', '.join(others)}) cannot write: {server}, or give it an object store "
                         "(--artifacts-destination s3://...)")


class TrackingLost(RuntimeError):
    """The tracking store stopped answering during the launch; the message says what to do."""


def run_sweep(launch: Launch) -> tuple[int, str]:
    """Run the launch end to end, its ``--analyze`` step included; returns the exit status and the sweep id.

    The status is 0 when every point finished (and the analysis passed), else non-zero.
    """
    study = launch.study
    uri = launch.tracking_uri
    # a searched key's bounds are prepared (checked) too: a loss hyperparameter the loss lacks fails here, not in Ray
    bounds = [study.make_config({**asdict(launch.points[0]), d.key: b}) for d in launch.space for b in d.bounds()]
    try:
        prepared = (study.prepare(launch.points + bounds, launch.switches)[:len(launch.points)] if study.prepare
                    else launch.points)
    except ValueError as error:  # e.g. a user loss that breaks the contract, a missing data folder
        raise UsageError(str(error)) from None
    launch = dataclasses.replace(launch, points=prepared)
    storage = private_folder(Path(launch.storage_path or "~/ray_results").expanduser().absolute(), "--storage-path")
    set_private_defaults(launch.tracking_timeout)
    check_reachable(uri)
    identity = prepare_store(uri)  # a SQLite store's file: the workers and the end of the launch check it is still it
    _check_ray_address(launch.address)
    if launch.resume:  # the lease and the record's checks come before anything starts
        sweep, finished, lease = _open_tracking(launch, uri, identity)
        try:
            _start_ray(launch)
        except BaseException as error:
            _abandon(sweep, lease, error)
            raise
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:  # the tracking store opens while Ray starts (in this thread)
            opening = pool.submit(_open_tracking, launch, uri, identity)
            try:
                _start_ray(launch)
            except BaseException as error:
                opened, _, held = opening.result()
                _abandon(opened, held, error)
                raise
            sweep, finished, lease = opening.result()
    import ray  # imported by _start_ray, after the loopback switch was set

    interrupted, lost, reported = False, None, None
    try:
        _check_resources(launch)
        _check_cluster_storage(launch, sweep)
        context = {"study": launch.study_ref, "tracking_uri": uri, "experiment_id": sweep.experiment_id,
                   "sweep_id": sweep.sweep_id, "cpus_per_trial": launch.cpus_per_trial,
                   "gpus_per_trial": launch.gpus_per_trial, "point_timeout": launch.point_timeout,
                   "log_models": launch.log_models, "checkpoint_every": launch.checkpoint_every,
                   "keep_checkpoints": launch.keep_checkpoints, "system_metrics": launch.system_metrics,
                   "store_identity": identity,
                   "provenance": {k: v for k, v in provenance_tags(launch.study_ref, launch.argv).items()
                                  if k != schema.TAG_COMMAND}}
        if launch.searching:
            print(f"{study.name}: {launch.n_points} points ({_describe_search(launch)}; {len(finished)} already "
                  f"finished), one per Ray trial, tracking {uri}, experiment {launch.experiment!r}, sweep "
                  f"{sweep.sweep_id}", flush=True)
            try:
                lost = _run_search(launch, _experiment_path(launch, sweep, storage), context, identity)
            except KeyboardInterrupt:
                interrupted = True
        else:
            pending = [cfg for cfg in launch.points if study.point_key(cfg, launch.point_dims) not in finished]
            if study.cost is not None:  # longest first: the sweep's tail is a short trial, not a long one
                pending.sort(key=study.cost, reverse=True)
            chunks = _plan_trials([asdict(cfg) for cfg in pending], launch.points_per_trial, _trial_slots(launch))
            print(f"{study.name}: {len(launch.points)} grid points ({len(finished)} already finished) in "
                  f"{len(chunks)} Ray trials, tracking {uri}, experiment {launch.experiment!r}, sweep "
                  f"{sweep.sweep_id}", flush=True)
            if pending:
                trials = [Shared(context={**context, "n_points": len(pending), "point_dims": launch.point_dims},
                                 points=chunk) for chunk in chunks]
                try:
                    lost, reported = _run_tuner(launch, _experiment_path(launch, sweep, storage), trials, identity)
                    reported = None if reported is None else reported | finished
                except KeyboardInterrupt:
                    interrupted = True
    except BaseException as error:
        ray.shutdown()
        _abandon(sweep, lease, error)
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
    if launch.analyze_out:
        status = status or _analyze(launch, sweep.sweep_id)
    return status, sweep.sweep_id


def _abandon(sweep: SweepWriter, lease: Lease, error: BaseException) -> None:
    """A launch that stops before its Ray trials ran: release the lease and end the parent run saying why
    (KILLED after Ctrl-C, else FAILED), so nothing is left RUNNING."""
    lease.release()
    with contextlib.suppress(Exception):
        sweep.abandon("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                      f"{type(error).__name__}: {error}")


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
    all_points = {study.point_key(p, launch.point_dims) for p in launch.points}
    if not launch.searching and reported is not None and all_points <= reported:
        done_points, failed_points = all_points, set()  # no need to read every run back
    else:
        done_points, failed_points = sweep.point_outcomes()
    if launch.searching or launch.metric:
        _report_search(launch, sweep)
    if launch.searching:
        n_all, n_done = launch.n_points, min(len(done_points), launch.n_points)
    else:
        n_all, n_done = len(all_points), len(done_points & all_points)
    sweep.close(n_all, n_done, interrupted)
    print(f"{study.name}: {n_done}/{n_all} {'' if launch.searching else 'grid '}points finished in sweep "
          f"{sweep.sweep_id} (experiment id {sweep.experiment_id}); MLflow UI: "
          f"{ui_link(launch.tracking_uri, sweep.experiment_id)}", flush=True)
    if n_done == n_all:
        return 0
    missing = n_all - n_done
    print(f"{study.name}: {missing} grid point(s) did not finish ({len(failed_points)} failed: see the FAILED point "
          f"runs' '{schema.TAG_ERROR}' tag and {schema.TRACEBACK_ARTIFACT} artifact); continue with --resume "
          f"{sweep.sweep_id}", flush=True)
    return 1


def _report_search(launch: Launch, sweep: SweepWriter) -> None:
    """After a search: how much early stopping saved, and the best complete point (on the parent run, printed)."""
    runs = sweep.finished_runs()
    stopped = [r for r in runs if schema.TAG_STOPPED in r.data.tags]
    if launch.scheduler != "fifo":
        planned = sum(int(r.data.params.get("epochs", 0)) for r in runs)
        saved = sum(int(r.data.params.get("epochs", 0)) - int(r.data.tags[schema.TAG_STOPPED]) for r in stopped)
        print(f"{launch.study.name}: the scheduler stopped {len(stopped)} of {len(runs)} points early; "
              f"{saved} of {planned} planned epochs not trained ({saved / max(planned, 1):.0%})", flush=True)
    complete = [r for r in runs if schema.TAG_STOPPED not in r.data.tags and launch.metric in r.data.metrics]
    if not launch.metric or not complete:
        return
    pick = max if launch.mode == "max" else min
    best = pick(complete, key=lambda r: r.data.metrics[launch.metric])
    keys = [d.key for d in launch.space] + [d for d in launch.study.grid if len(launch.grid[d]) > 1]
    values = {k: best.data.params[k] for k in keys if k in best.data.params}
    sweep.record_best(best.info.run_id, launch.metric, best.data.metrics[launch.metric], values)
    shown = " ".join(f"{k}={v}" for k, v in values.items())
    print(f"{launch.study.name}: best point by {launch.metric} ({launch.mode}): {launch.metric}="
          f"{best.data.metrics[launch.metric]:.4g}  {shown}  (run {best.info.run_id})", flush=True)


def _analyze(launch: Launch, sweep_id: str) -> int:
    """``--analyze DIR``: the study's analysis and validation of this sweep; its exit status."""
    from analysis.common import run_analysis

    argv = ["--experiment", launch.experiment, "--sweep-id", sweep_id, "--out", launch.analyze_out, "--validate",
            "--tracking-uri", launch.tracking_uri]
    return run_analysis(launch.study.analysis, launch.study.name, argv,
                        provenance=provenance_tags(launch.study_ref, launch.argv))


def _experiment_path(launch: Launch, sweep: SweepWriter, storage: Path) -> str:
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


def _restored(launch: Launch, experiment_path: str, trainable):
    """With ``--resume``, the Ray Tune experiment at ``experiment_path`` restored (its searcher's state with it) if
    it is there and private; else None."""
    from ray import tune

    if not (launch.resume and tune.Tuner.can_restore(experiment_path)):
        return None
    _check_private(Path(experiment_path))
    print(f"restoring the Ray Tune experiment {experiment_path}", flush=True)
    return tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)


def _run_tuner(launch: Launch, experiment_path: str, trials: list[dict],
               identity: tuple[int, int] | None = None) -> tuple[str | None, set[str] | None]:
    """Run the trials as a Ray Tune experiment at ``experiment_path``.

    If that experiment exists (a ``--resume`` on the machine that ran it), Ray
    Tune restores it: finished trials stay finished, interrupted and errored
    ones continue from their last checkpoint.  The progress callback is part
    of the restored state (see :mod:`tune_jobs.progress`).  Returns the error
    if the tracking store stopped answering (which ends the run), else None, and the points the Ray trials
    reported FINISHED (None for a restored experiment, whose callback is its own).
    """
    from ray import tune

    from tune_jobs.progress import PointProgress
    from tune_jobs.worker import run_points

    study = launch.study
    trainable = tune.with_resources(run_points, {"cpu": launch.cpus_per_trial, "gpu": launch.gpus_per_trial})
    tuner, progress = _restored(launch, experiment_path, trainable), None
    if tuner is None:
        progress = PointProgress(study.metrics)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=launch.max_concurrent, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=os.path.basename(experiment_path), storage_path=os.path.dirname(experiment_path),
                verbose=0, callbacks=[progress],
                failure_config=tune.FailureConfig(max_failures=launch.max_failures),
            ),
        )
    return _fit(launch, tuner, identity), (progress.finished if progress is not None else None)


def _fit(launch: Launch, tuner, identity: tuple[int, int] | None = None) -> str | None:
    """Run the Tuner; the error if the tracking store stopped answering (which ends the run), else None."""
    try:
        tuner.fit()
    except Exception as error:  # a Ray trial lost the tracking store (the callback ended the run), or worse
        if not store_gone(launch.tracking_uri, identity):
            raise
        return _lost_reason(error)
    return None


def _lost_reason(error: BaseException) -> str:
    """What a Ray trial said when it lost the tracking store, from the error Ray Tune ends the run with (its text is
    a whole traceback: the worker's report, else the traceback's last line, says what happened)."""
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    for line in reversed(lines):
        if "TrackingLostError:" in line and line.partition("TrackingLostError:")[2].strip():
            return line.partition("TrackingLostError:")[2].strip()[:500]
    told = [line for line in lines if not line.startswith(("Traceback", "File ", "^", "~")) and ":" in line]
    return (told[-1] if told else lines[-1] if lines else type(error).__name__)[:500]


def _describe_search(launch: Launch) -> str:
    parts = [f"{launch.search} search" + (f" of {launch.num_samples} sample(s) per grid point" if launch.space else "")]
    parts += [f"{d.key}={d.describe()}" for d in launch.space]
    if launch.scheduler == "asha":
        parts.append(f"ASHA on {launch.metric} ({launch.mode}), grace {launch.grace_period} epoch(s), "
                     f"reduction factor {launch.reduction_factor:g}")
    elif launch.metric:
        parts.append(f"{launch.mode} {launch.metric}")
    return ", ".join(parts)


def _run_search(launch: Launch, experiment_path: str, context: dict[str, Any],
                identity: tuple[int, int] | None = None) -> str | None:
    """A search (or a scheduled grid) as Ray Tune sees it: the grid points as ``grid_search`` over ``base``, each
    searched key as Ray Tune's sampler, ``num_samples``, and the search algorithm and scheduler asked for.

    One point per Ray trial. ``--resume`` restores Ray Tune's experiment (the searcher's state included) when it
    is on this machine; points with a FINISHED run are skipped by the trial that draws them again.
    """
    from ray import tune

    from tune_jobs.progress import PointProgress
    from tune_jobs.worker import run_search_point

    study = launch.study
    context = {**context, "n_points": launch.n_points, "space_keys": [d.key for d in launch.space],
               "point_dims": launch.point_dims}
    bases = [Shared(asdict(cfg)) for cfg in launch.points]
    trainable = tune.with_resources(run_search_point, {"cpu": launch.cpus_per_trial, "gpu": launch.gpus_per_trial})
    tuner = _restored(launch, experiment_path, trainable)
    if tuner is None:
        if launch.resume:
            raise UsageError(f"--resume of a search sweep needs Ray Tune's state at {experiment_path} (the searcher's "
                             "samples and state live there) and it is not there; start a new sweep")
        search_alg = None
        if launch.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(metric=launch.metric, mode=launch.mode, seed=launch.search_seed)
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=launch.search_seed)
        scheduler = None
        if launch.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            # max_t far beyond any epoch count: the rungs are grace x factor^k; ASHA never stops a point's last epoch
            scheduler = ASHAScheduler(time_attr="epochs_done", metric=launch.metric, mode=launch.mode,
                                      max_t=10**6, grace_period=launch.grace_period,
                                      reduction_factor=launch.reduction_factor)
        param_space = {"context": context, "base": tune.grid_search(bases) if len(bases) > 1 else bases[0],
                       **{d.key: d.to_tune() for d in launch.space}}
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=launch.num_samples,
                                        max_concurrent_trials=launch.max_concurrent, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=os.path.basename(experiment_path), storage_path=os.path.dirname(experiment_path), verbose=0,
                callbacks=[PointProgress(study.metrics)],
                failure_config=tune.FailureConfig(max_failures=launch.max_failures)),
        )
    return _fit(launch, tuner, identity)


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
