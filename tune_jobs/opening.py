"""Opening a sweep's record: a new parent run, or with ``--resume`` the one to continue once its lease and its
recorded inputs allow it; and ending it when a launch stops before its Ray trials ran."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from record import schema
from record.store import store_identity, store_lock
from tune_jobs.launch import Launch, UsageError
from tune_jobs.provenance import provenance_tags

if TYPE_CHECKING:
    from record.lease import Lease
    from record.write import SweepWriter


def _resume_sweep(client, launch: Launch, experiment_id: str) -> tuple[str, Lease]:
    """``--resume``: the sweep to continue and its lease, if no launch holds it and its recorded grid and params
    are this launch's. It is reopened (RUNNING) only after every check passed: a refused ``--resume`` leaves it as
    it was."""
    from record.lease import Lease, LeaseHeld
    from record.read import find_sweep, recorded_grid
    from record.write import SweepWriter, reopen_sweep

    study, tracking = launch.study, launch.tracking
    wanted = None if tracking.resume == "latest" else tracking.resume
    sweep = find_sweep(client, experiment_id, study.name, wanted)
    if sweep is None:
        raise UsageError(f"--resume: no {study.name} sweep " + (f"{wanted!r} " if wanted else "")
                         + f"in experiment {tracking.experiment!r}")
    recorded, requested = recorded_grid(sweep), launch.recorded_grid
    if recorded and recorded != requested:
        shown = {d: schema.encode(v) for d, v in recorded.items()}
        raise UsageError(f"--resume: sweep {sweep.info.run_id} was launched with grid {shown}, this command asks "
                         f"for {({d: schema.encode(v) for d, v in requested.items()})}")
    lease = Lease(client, sweep.info.run_id)
    try:
        note = lease.acquire(force=tracking.force)
    except LeaseHeld as held:
        raise UsageError(f"--resume: {held}; wait for it to end, or pass --force if that machine is dead") from None
    if note:
        print(f"{study.name}: {note}", flush=True)
    try:
        _check_unchanged(launch, SweepWriter(tracking.uri, experiment_id, sweep.info.run_id, study.name))
    except UsageError:
        lease.release()
        raise
    reopen_sweep(client, sweep.info.run_id)
    return sweep.info.run_id, lease


def _create_sweep(client, launch: Launch, experiment_id: str) -> tuple[str, Lease]:
    """A new sweep's parent run (its protocol values, grid, search settings and provenance) and its lease."""
    from record.lease import Lease
    from record.write import create_sweep

    study = launch.study
    provenance = provenance_tags(launch.study_ref, launch.argv)
    fixed = {k: v for k, v in launch.fixed.items() if k not in study.unlogged_fields}
    opened = {f"{prefix}.{name}": value for prefix, field in study.open_params.items()
              for name, value in launch.fixed.get(field, ())}
    sweep_id = create_sweep(
        client, experiment_id, study=study.name, run_name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        command=provenance[schema.TAG_COMMAND], provenance=provenance, note=f"**{study.name}**: {study.description}",
        fixed={**fixed, **opened, **launch.search.params()}, grid=launch.recorded_grid, n_points=launch.n_points,
        param_types=study.param_types(),
    )
    lease = Lease(client, sweep_id)
    lease.acquire(settle_s=0)
    return sweep_id, lease


def open_tracking(launch: Launch, identity: tuple[int, int] | None = None) -> tuple[SweepWriter, set[str], Lease]:
    """The sweep's parent run (opened, or found for ``--resume``), the points it already finished, its lease.

    For a new sweep this runs in a thread while Ray starts (the driver's first
    MLflow import happens here); a small artifact on the parent proves the
    artifact store takes writes before any point trains. ``identity``: the SQLite store's file the launch
    created (:func:`record.store.prepare_store`); the lease is not renewed into another.
    """
    from record.runs import get_or_create_experiment, open_client
    from record.write import SweepWriter, check_artifacts

    uri = launch.tracking.uri
    with store_lock(uri):  # a new SQLite store's tables are created once (by the client), not by two at a time
        client = open_client(uri)  # ...and a process that is no launch creating them meanwhile is waited for
        experiment_id = get_or_create_experiment(client, launch.tracking.experiment, uri)
    sweep_id, lease = (_resume_sweep if launch.tracking.resume else _create_sweep)(client, launch, experiment_id)
    sweep = SweepWriter(uri, experiment_id, sweep_id, launch.study.name)
    try:
        check_artifacts(client, sweep_id)
        finished = sweep.take_over() if launch.tracking.resume else set()
    except Exception as error:
        abandon(sweep, lease, error)
        raise
    lease.keep(uri, (lambda: store_identity(uri) == identity) if identity is not None else (lambda: True))
    return sweep, finished, lease


def _check_unchanged(launch: Launch, sweep: SweepWriter) -> None:
    """``--resume``: a point's params must be those its earlier runs recorded (a changed loss file's SHA-256
    among them): the code a resumed point runs is the code the user passes now, checked against the record."""
    recorded = sweep.recorded_params()
    for config in launch.points:
        before = recorded.get(launch.point_key(config))
        if before is None:
            continue
        now = {k: schema.encode(v) for k, v in launch.study.params(config).items()}
        changed = sorted(k for k in now if k in before and before[k] != now[k])
        if changed:
            key = changed[0]
            raise UsageError(f"--resume: point {launch.point_key(config)} was run with {key}={before[key]}, "
                             f"this command gives {key}={now[key]}; resume with the same inputs, or start a new sweep")


def abandon(sweep: SweepWriter, lease: Lease, error: BaseException) -> None:
    """A launch that stops before its Ray trials ran: release the lease and end the parent run saying why
    (KILLED after Ctrl-C, else FAILED), so nothing is left RUNNING."""
    lease.release()
    with contextlib.suppress(Exception):
        sweep.abandon("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                      f"{type(error).__name__}: {error}")

