"""The shared runner: a study's grid -> a Ray Tune run -> one MLflow child run per grid point.

Driver side (:func:`main`): validate the launch, open the MLflow parent run,
start or join Ray, run the Tuner, then close the parent with a summary.
Worker side (:func:`run_points`): compute a few grid points in sequence and
log each one as its own MLflow child run, skipping points an earlier attempt
already finished, so retries and ``--resume`` never duplicate a point.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from core.training import torch_threads
from tune_jobs import tracking
from tune_jobs.cli import Launch, UsageError, fail_usage, parse_launch
from tune_jobs.study import Study, format_value, load_study


TAG_RAY_EXPERIMENT = "robustlab.ray_experiment"


class PointsFailed(RuntimeError):
    """Raised by a Ray trial after all its points ran, when some of them failed."""


# --------------------------------------------------------------------------- worker


class TuneEpochHooks:
    """:class:`core.trial.EpochHooks` for a long trial: per-epoch MLflow metrics and Ray Tune checkpoints.

    A checkpoint holds the trial's state and its MLflow run id, so a retried or
    resumed trial continues from its last epoch in the same MLflow run.
    """

    STATE_FILE = "trial_state.pt"

    def __init__(self, tracker: tracking.SweepTracker, point: str) -> None:
        self.tracker = tracker
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

        self.tracker.log_step(self.run_id, epoch, metrics)
        self.last_logged = dict(metrics)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"point": self.point, "run_id": self.run_id, "state": state()},
                       os.path.join(folder, self.STATE_FILE))
            tune.report({"point": self.point, "status": "epoch", "epoch": epoch, **metrics},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def _device(gpus_per_trial: float) -> str:
    """CUDA when this trial was given a GPU and torch sees one, else CPU."""
    import torch

    return "cuda" if gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def run_points(trial_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: compute the trial's grid points, one MLflow child run each."""
    from ray import tune

    trial_config = trial_config["trial"]
    context = trial_config["context"]
    study = load_study(context["study"])
    tracker = tracking.SweepTracker(context["tracking_uri"], context["experiment_id"], context["sweep_id"],
                                    study.name)
    ray_trial = tune.get_context().get_trial_id()
    earlier = tracker.runs_by_point(ray_trial)  # empty unless this trial is retried or restored
    failures = []
    for index, entry in enumerate(trial_config["points"]):
        config = study.config_type(**entry)
        point = study.point_key(config)
        if any(run.info.status == "FINISHED" for run in earlier.get(point, ())):
            tune.report({"point": point, "status": "skipped", "points_done": index + 1})
            continue
        hooks = TuneEpochHooks(tracker, point) if study.checkpoints else None
        run_id = tracker.start(point, study.params(config), ray_trial, earlier=earlier.get(point, ()),
                               resume_run_id=hooks.resumed_run_id if hooks else None)
        try:
            with torch_threads(getattr(config, "torch_threads", 1)):
                if hooks is not None:
                    hooks.run_id = run_id
                    result = study.run_trial(config, hooks=hooks, device=_device(context["gpus_per_trial"]))
                else:
                    result = study.run_trial(config)
            result.check_finite()
            tracker.finish(run_id, result, logged=hooks.last_logged if hooks else None)
        except Exception as error:  # the point fails; the trial's other points go on
            tracker.fail(run_id, error)
            failures.append(f"{point}: {type(error).__name__}: {error}")
            tune.report({"point": point, "status": "failed", "points_done": index + 1, "error": str(error)[:500]})
            continue
        tune.report({"point": point, "status": "finished", "points_done": index + 1, **result.metrics})
    if failures:
        raise PointsFailed(f"{len(failures)} point(s) failed: " + "; ".join(failures))


# --------------------------------------------------------------------------- driver


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _start_ray(launch: Launch) -> None:
    """Join ``--address`` or start a local Ray on loopback, sized to this machine."""
    if launch.address is None:
        # Read by Ray at import: keep every local Ray port on 127.0.0.1 (Ray binds all interfaces otherwise).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # MLflow is the record: no per-result JSON/CSV/TensorBoard files from the driver (set it to 0 to get them back).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    # Ray Tune's end-of-run summary of its own result files adds nothing to the MLflow summary printed after it.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if launch.address is None:
        ray.init(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=True)
    else:  # ship this project's packages to every node: no shared filesystem or install of robustlab needed
        packages = [os.path.dirname(importlib.import_module(name).__file__) for name in ("core", "tune_jobs")]
        ray.init(address=launch.address, logging_level="WARNING", runtime_env={"py_modules": packages})


def _progress_callback(total: int, metrics: Sequence[str]):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished grid point (and per epoch of long trials) as results arrive."""

        def __init__(self) -> None:
            self.points = 0
            self.start = time.monotonic()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            status = result.get("status")
            if status is None:
                return
            if status != "epoch":
                self.points += 1
            shown = ", ".join(f"{k}={result[k]:.4g}" for k in ("epoch", *metrics)
                              if isinstance(result.get(k), (int, float)))
            if status == "failed":
                shown = result.get("error", "")
            print(f"[{self.points}/{total} {time.monotonic() - self.start:6.1f}s] {status:8s} {result.get('point')}"
                  + (f"  {shown}" if shown else ""), flush=True)

    return Progress()


def _open_sweep(client, launch: Launch, experiment_id: str) -> str:
    """The parent run: a new one, or with ``--resume`` the one to continue."""
    study = launch.study
    if launch.resume:
        query = f"tags.`{tracking.TAG_KIND}` = 'sweep' and tags.`{tracking.TAG_STUDY}` = '{study.name}'"
        sweeps = tracking.search_all_runs(client, [experiment_id], query)
        if launch.resume != "latest":
            sweeps = [s for s in sweeps if s.info.run_id == launch.resume]
        if not sweeps:
            raise UsageError(f"--resume: no {study.name} sweep "
                             + ("" if launch.resume == "latest" else f"{launch.resume!r} ")
                             + f"in experiment {launch.experiment!r}")
        sweep = sweeps[0]
        recorded = {k[len("grid."):]: v for k, v in sweep.data.params.items() if k.startswith("grid.")}
        requested = {d: format_value(v) for d, v in launch.grid.items()}
        if recorded and recorded != requested:
            raise UsageError(f"--resume: sweep {sweep.info.run_id} was launched with grid {recorded}, "
                             f"this command asks for {requested}")
        client.update_run(sweep.info.run_id, status="RUNNING")
        return sweep.info.run_id
    name = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(experiment_id, run_name=name,
                            tags={tracking.TAG_KIND: "sweep", tracking.TAG_STUDY: study.name,
                                  "robustlab.command": " ".join(sys.argv)[:4000]})
    sweep_id = run.info.run_id
    params = {k: format_value(v) for k, v in launch.fixed.items() if k not in study.unlogged_fields}
    params.update({f"grid.{d}": format_value(v) for d, v in launch.grid.items()})
    tracking.log_flat(client, sweep_id, params=params,
                      tags={tracking.TAG_SWEEP: sweep_id, "robustlab.n_points": len(launch.points)})
    return sweep_id


def _open_tracking(launch: Launch, uri: str):
    """The client, experiment, parent run and (on ``--resume``) the points already finished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = tracking.get_or_create_experiment(client, launch.experiment, uri)
    sweep_id = _open_sweep(client, launch, experiment_id)
    finished = set()
    if launch.resume:
        sweep_tracker = tracking.SweepTracker(uri, experiment_id, sweep_id, launch.study.name)
        runs = sweep_tracker.point_runs()
        for run in runs:
            if run.info.status == "RUNNING":  # the launch that ran it is gone
                client.set_terminated(run.info.run_id, "KILLED")
        finished = {r.data.tags.get(tracking.TAG_POINT) for r in runs if r.info.status == "FINISHED"}
    return client, experiment_id, sweep_id, finished


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
    """Run the launch end to end; returns the exit status (0 when every point finished) and the sweep id."""
    study = launch.study
    uri = tracking.resolve_tracking_uri(launch.tracking_uri)
    try:
        prepared = study.prepare(launch.points, launch.switches) if study.prepare else launch.points
    except ValueError as error:  # e.g. a user loss that breaks the contract, a missing data folder
        raise UsageError(str(error)) from None
    tracking.check_reachable(uri)
    _check_ray_address(launch.address)
    with ThreadPoolExecutor(max_workers=1) as pool:  # Ray's start-up overlaps the tracking store's
        opening = pool.submit(_open_tracking, launch, uri)
        try:
            _start_ray(launch)
        finally:
            client, experiment_id, sweep_id, finished = opening.result()
    pending = [cfg for cfg in prepared if study.point_key(cfg) not in finished]
    print(f"{study.name}: {len(launch.points)} grid points ({len(finished)} already finished), "
          f"tracking {uri}, experiment {launch.experiment!r}, sweep {sweep_id}", flush=True)

    interrupted = False
    if pending:
        context = {"study": study.name, "tracking_uri": uri, "experiment_id": experiment_id, "sweep_id": sweep_id,
                   "gpus_per_trial": launch.gpus_per_trial}
        if study.cost is not None:  # longest first: the sweep's tail is a short trial, not a long one
            pending.sort(key=study.cost, reverse=True)
        entries = [asdict(cfg) for cfg in pending]
        trials = [{"context": context, "points": chunk} for chunk in _chunks(entries, launch.points_per_trial)]
        try:
            _run_tuner(launch, _experiment_path(client, launch, sweep_id), trials, len(pending))
        except KeyboardInterrupt:
            interrupted = True
    import ray  # imported by _start_ray, after the loopback switch was set

    ray.shutdown()

    sweep_tracker = tracking.SweepTracker(uri, experiment_id, sweep_id, study.name)
    runs = sweep_tracker.point_runs()
    done_points = {r.data.tags.get(tracking.TAG_POINT) for r in runs if r.info.status == "FINISHED"}
    failed_points = {r.data.tags.get(tracking.TAG_POINT) for r in runs if r.info.status == "FAILED"} - done_points
    all_points = {study.point_key(p) for p in launch.points}
    n_done = len(done_points & all_points)
    client.set_terminated(sweep_id, tracking.terminal_status(len(all_points), n_done, interrupted))
    experiment_url = f"experiment id {experiment_id}"
    print(f"{study.name}: {n_done}/{len(all_points)} grid points finished in sweep {sweep_id} ({experiment_url})",
          flush=True)
    if n_done == len(all_points):
        return 0, sweep_id
    missing = len(all_points) - n_done
    print(f"{study.name}: {missing} grid point(s) did not finish ({len(failed_points)} failed: see the FAILED child "
          f"runs' 'robustlab.error' tag and error/traceback.txt artifact); continue with --resume {sweep_id}",
          flush=True)
    return 1, sweep_id


def _experiment_path(client, launch: Launch, sweep_id: str) -> str:
    """Where Ray Tune keeps this sweep's state: recorded on the parent run so ``--resume`` finds it."""
    recorded = client.get_run(sweep_id).data.tags.get(TAG_RAY_EXPERIMENT)
    if launch.resume and recorded:
        return recorded
    storage = os.path.abspath(launch.storage_path or os.path.expanduser("~/ray_results"))
    path = os.path.join(storage, f"{launch.study.name}-{sweep_id}" + (f"-{int(time.time())}" if launch.resume else ""))
    client.set_tag(sweep_id, TAG_RAY_EXPERIMENT, path)
    return path


def _trial_name(trial) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def _run_tuner(launch: Launch, experiment_path: str, trials: list[dict], n_points: int) -> None:
    """Run the trials as a Ray Tune experiment at ``experiment_path``.

    If that experiment exists (a ``--resume`` on the machine that ran it), Ray
    Tune restores it: finished trials stay finished, interrupted and errored
    ones continue from their last checkpoint.
    """
    from ray import tune

    study = launch.study
    trainable = tune.with_resources(run_points, {"cpu": launch.cpus_per_trial, "gpu": launch.gpus_per_trial})
    callbacks = [_progress_callback(n_points, study.metrics)]
    if launch.resume and tune.Tuner.can_restore(experiment_path):
        print(f"restoring the Ray Tune experiment {experiment_path}", flush=True)
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
        tuner._local_tuner.get_run_config().callbacks = callbacks  # callbacks are not part of the saved state
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=launch.max_concurrent, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=os.path.basename(experiment_path), storage_path=os.path.dirname(experiment_path),
                verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=launch.max_failures),
            ),
        )
    tuner.fit()


def main(study_name: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tune_jobs.<study>``."""
    study = load_study(study_name)
    try:
        launch, _ = parse_launch(study, argv)
        status, sweep_id = run_sweep(launch)
    except (UsageError, tracking.TrackingUnavailable) as error:
        fail_usage(str(error))
    if launch.analyze_out:
        from analysis.common import run_analysis_main

        argv = ["--experiment", launch.experiment, "--sweep-id", sweep_id, "--out", launch.analyze_out, "--validate"]
        if launch.tracking_uri:
            argv += ["--tracking-uri", launch.tracking_uri]
        status = status or run_analysis_main(study.name, argv)
    return status
