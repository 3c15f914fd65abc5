"""The Ray side of a sweep: a Tune function trainable (a Ray trial) computing a few grid points, one MLflow run each
(:class:`PointRun`: a short point's run is written whole when the point ends).

Points an earlier attempt of the same Ray trial already finished are skipped,
so retries and restores never duplicate a point; checkpointing studies get
:class:`RunEpochHooks` (per-epoch metrics and checkpoints in the point's MLflow
run, which every node reaches through the tracking server), as do studies that
report epochs under a scheduler (without checkpoints); studies that report epochs
otherwise get an :class:`EpochRecorder` (the epochs become histories when the point ends).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core.point import NO_HOOKS, PointContext
from record import schema
from record.store import check_store, tracking_lost
from record.write import SweepWriter
from tune_jobs.point_run import EpochRecorder, PointRun, RunEpochHooks, log_model, system_metrics
from tune_jobs.progress import POINTS, TRACKING_LOST
from tune_jobs.study import load_study
from tune_jobs.trial import TrialContext, unpack_point
from tune_jobs.watchdog import PointTimeout, Watchdog


class PointsFailed(RuntimeError):
    """Raised by a Ray trial after all its points ran, when some of them failed."""


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

    uri, identity = context.tracking_uri, context.store_identity
    device = str(select_device("cuda" if context.gpus_per_trial > 0 else "cpu"))
    threads = max(1, int(context.cpus_per_trial))
    ray_trial = tune.get_context().get_trial_id()
    interval = context.system_metrics
    failures, reports = [], _Reports()
    try:
        # The store the launch opened, not a new one: MLflow would create an empty store where a SQLite file went
        check_store(uri, identity)
        writer = SweepWriter(uri, context.experiment_id, context.sweep_id, study.name, context.provenance)
        # Earlier runs of these points: a retry's or restore's (this Ray trial's), and for checkpointing studies
        # any earlier launch's of the sweep (a --resume continues their checkpoints). One search either way.
        earlier = writer.runs_by_point(None if study.checkpoints else ray_trial)
        pending = []
        for index, (point, config) in enumerate(points):
            if any(run.info.status == "FINISHED" for run in earlier.get(point, ())):
                reports.send({"point": point, "status": "skipped", "points_done": index + 1})
            else:
                name = study.run_name(point, getattr(context, "single_dims", ()))  # one-valued grid dims last
                dims = {d: study.value(config, d) for d in (*study.grid, *context.space_keys)}  # grid, then searched
                pending.append((index, point, config,
                                PointRun(writer, point, study.params(config), ray_trial, name, dims)))
        together = {}
        if study.run_points is not None and not study.checkpoints and not context.epoch_reports and not interval \
                and len(pending) > 1:
            together = _compute_together(context, study, pending, PointContext(device=device, threads=threads))
        if not together:  # the skipped points' outcomes go now, each computed point's as it ends
            reports.release()
        for index, point, config, run in pending:
            check_store(uri, identity)  # a point's runs go nowhere else (a store gone ends the Ray trial, reported)
            hooks = _hooks(context, study, writer, run, earlier.get(point, ()), ray_trial)
            live = isinstance(hooks, RunEpochHooks)  # its run is open, its epochs logged as they end
            try:
                result = together.get(point)
                if result is None:
                    point_context = PointContext(device=device, threads=threads, hooks=hooks or NO_HOOKS)
                    with (system_metrics(uri, run.open() if interval else None, interval),
                          Watchdog(context.point_timeout, run.fail, on_long=None if live else run.open)):
                        result = study.run_point(config, point_context)
                _record(context, study, writer, run, hooks, result)
            except PointTimeout:
                error = PointTimeout(f"the point ran longer than --point-timeout {context.point_timeout:g} s")
            except Exception as raised:  # the point fails; the Ray trial's other points go on
                if tracking_lost(uri, identity):
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
        if tracking_lost(uri, identity):
            tune.report({"status": TRACKING_LOST, "error": f"{type(error).__name__}: {error}"[:500]})
        raise
    if failures:
        raise PointsFailed(f"{len(failures)} point(s) failed: " + "; ".join(failures))


def _hooks(context: TrialContext, study, writer: SweepWriter, run: PointRun, earlier, ray_trial: str):
    """A checkpointing study's point, or one that reports epochs to a scheduler: its run opens at once (continuing
    the newest checkpointed earlier run) and gets each epoch (and checkpoint) as it ends (:class:`RunEpochHooks`).
    Else earlier unfinished runs are ended KILLED, and a point that reports epochs gets an :class:`EpochRecorder`,
    any other None."""
    if not study.checkpoints and not (study.reports_epochs and context.epoch_reports):
        writer.kill_earlier(earlier)
        return EpochRecorder() if study.reports_epochs else None
    hooks = RunEpochHooks(writer, run.point, context.checkpoint_every, earlier, run.params.get("epochs"),
                          checkpoints=study.checkpoints, metric=context.metric if context.epoch_reports else None)
    hooks.run_id = run.adopt(writer.start(run.point, run.params, ray_trial, earlier=earlier,
                                          resume_run_id=hooks.resumed_run_id, resumed_epoch=hooks.resumed_epoch,
                                          run_name=run.run_name, dims=run.dims))
    return hooks


def _record(context: TrialContext, study, writer: SweepWriter, run: PointRun, hooks, result) -> None:
    """A computed point's result checked and recorded: its model if asked, its run FINISHED, its checkpoints
    dropped (a leftover checkpoint only takes disk: said, not fatal)."""
    study.check_result(result)
    model_id = None
    if context.log_models and result.model is not None:
        model_id = log_model(writer, run.open(), result.model)
    if isinstance(hooks, EpochRecorder):
        result = hooks.merged(result)
    reported = {*result.metrics, *result.histories, *(hooks.last_logged if isinstance(hooks, RunEpochHooks) else ())}
    if context.metric is not None and context.metric not in reported:  # declared by the study, not reported
        raise ValueError(f"the point reports no {context.metric!r} (--metric, which the search selects on) although "
                         f"the study declares it; it reports {', '.join(map(repr, sorted(reported))) or 'nothing'}")
    run.finish(result, logged=hooks.last_logged if isinstance(hooks, RunEpochHooks) else None, model_id=model_id)
    if study.checkpoints:
        try:
            writer.drop_checkpoints(run.run_id, keep_latest=context.keep_checkpoints)
        except Exception as error:  # noqa: BLE001 - the point is recorded
            print(f"robustlab: point {run.point}: its checkpoints could not be deleted from run {run.run_id} "
                  f"({type(error).__name__}: {error})", flush=True)


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
    computation by the points' total; their runs open RUNNING once it has run :data:`tune_jobs.watchdog.OPEN_AFTER_S`.
    A study that reports epochs gets one :class:`EpochRecorder` per point (``point_context.point_hooks``): its
    results come back with their epochs as histories."""
    runs = [run for _, _, _, run in pending]
    recorders = [EpochRecorder() for _ in pending] if study.reports_epochs else []
    point_context = dataclasses.replace(point_context, point_hooks=tuple(recorders))
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
        if tracking_lost(context.tracking_uri, context.store_identity):
            raise
        print(f"robustlab: {len(runs)} points computed together failed ({type(error).__name__}: {error}); "
              "computing them one by one", flush=True)
        return {}
    if recorders:
        results = [recorder.merged(result) for recorder, result in zip(recorders, results)]
    return {point: result for (_, point, _, _), result in zip(pending, results)}

