"""What analysis reads: one sweep as a typed read model (a tidy DataFrame of its point runs plus the parent)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from record import schema
from record.runs import has_finished_point, point_runs, point_statuses, sweep_runs
from record.store import StoreError, resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class SweepNotFound(LookupError):
    """No experiment or no sweep matches; the message says what was looked for, and where."""


@dataclass(frozen=True)
class BestPoint:
    """The best point of a sweep by one metric (:meth:`SweepRecord.best_point`).

    params: the point's params, typed (every grid, protocol and searched value its run recorded).
    """

    run_id: str
    point: str
    metric: str
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class EarlyStopping:
    """What a scheduler's early stopping saved in a sweep (:meth:`SweepRecord.early_stopping`).

    n_points:          points with a FINISHED run, stopped early or not;
    n_stopped:         those a scheduler stopped early;
    planned_epochs:    the epochs those points were set to train, summed;
    untrained_epochs:  the epochs the stopped ones did not train, summed.
    """

    n_points: int
    n_stopped: int
    planned_epochs: int
    untrained_epochs: int


@dataclass
class SweepRecord:
    """One sweep as recorded: the parent's metadata and one row per grid point with a FINISHED run.

    runs:     columns ``run_id``, ``point``, every param (typed: from the
              recorded ``robustlab.param_types``, else inferred from the text)
              and every final metric (float; NaN where a run lacks it); a
              point with several FINISHED runs keeps the newest.
    fixed:    the fixed protocol values (typed); ``grid``: each swept dimension's values.
    stopped:  the points a scheduler stopped early (FINISHED, tagged
              ``robustlab.stopped_early``), apart from ``runs``: same columns
              plus ``stopped_early`` (epochs trained).
    param_types: the recorded ``robustlab.param_types`` (param -> type name; empty for old sweeps).
    start_times: run id -> start time (ms since the epoch) of every run in ``runs`` and ``stopped``.
    """

    client: MlflowClient
    tracking_uri: str
    experiment_id: str
    experiment: str
    sweep_id: str
    study: str
    name: str
    status: str
    start_time: int | None
    command: str | None
    fixed: dict[str, Any]
    grid: dict[str, tuple]
    expected_points: int
    runs: pd.DataFrame
    duplicate_points: list[str] = field(default_factory=list)
    unfinished_points: list[str] = field(default_factory=list)
    stopped: pd.DataFrame = field(default_factory=pd.DataFrame)
    param_types: dict[str, str] = field(default_factory=dict)
    start_times: dict[str, int] = field(default_factory=dict)

    @property
    def n_finished(self) -> int:
        """Points with a FINISHED run, stopped early or not."""
        return len(self.runs) + len(self.stopped)

    def history(self, run_id: str, key: str) -> list[float]:
        """A metric's values of one point run, ordered by step."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
        return [m.value for m in points]

    def point_params(self, run_id: str) -> dict[str, Any]:
        """The params one point run recorded, typed as :attr:`runs` types them."""
        decode = _decoder(self.param_types)
        return {key: decode(key, text) for key, text in self.client.get_run(run_id).data.params.items()}

    def best_point(self, metric: str, mode: str) -> BestPoint | None:
        """The best point by ``metric`` (``mode`` ``"max"`` or ``"min"``) among the points that ran to the end
        (:attr:`runs`: a point a scheduler stopped early is not a candidate) and report ``metric``; None if none
        does.

        Deterministic: a tie goes to the run that started first, then to the smallest run id, so the same record
        gives the same best point however its runs are read back (a resumed search's included).
        """
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if self.runs.empty or metric not in self.runs:
            return None
        values = self.runs[metric].astype(float)
        values = values[values.notna()]
        if values.empty:
            return None
        target = values.max() if mode == "max" else values.min()
        tied = self.runs.loc[values.index[values == target], "run_id"]
        run_id = min(tied, key=lambda r: (math.inf if self.start_times.get(r) is None else self.start_times[r], r))
        row = self.runs[self.runs["run_id"] == run_id].iloc[0]
        return BestPoint(run_id=run_id, point=row["point"], metric=metric, value=float(target),
                         params=self.point_params(run_id))

    def early_stopping(self, epochs: str = "epochs") -> EarlyStopping:
        """How many points a scheduler stopped early and how many epochs that saved: ``epochs`` is the param
        holding a point's planned epochs (a point without it counts 0 planned, 0 untrained), the
        ``stopped_early`` column the epochs a stopped point trained."""
        def planned(frame: pd.DataFrame) -> pd.Series:
            if frame.empty or epochs not in frame:
                return pd.Series(0, index=frame.index, dtype="int64")
            return frame[epochs].fillna(0).astype("int64")

        stopped = planned(self.stopped)
        untrained = int((stopped - self.stopped["stopped_early"]).clip(lower=0).sum()) if len(self.stopped) else 0
        return EarlyStopping(n_points=self.n_finished, n_stopped=len(self.stopped),
                             planned_epochs=int(planned(self.runs).sum() + stopped.sum()), untrained_epochs=untrained)


def find_sweep(client: MlflowClient, experiment_id: str, study: str | None = None,
               sweep_id: str | None = None, with_points: bool = False):
    """The parent run of sweep ``sweep_id``, or the experiment's latest (of ``study`` if given); None if none.

    with_points: without ``sweep_id``, the latest sweep with at least one FINISHED point run (a launch that failed
    before any point finished is skipped); the latest of any state if no sweep has one. ``--resume`` asks without
    it: the latest sweep of the study, whatever its state.
    """
    runs = sweep_runs(client, experiment_id, study)
    if sweep_id is not None:
        runs = [r for r in runs if r.info.run_id == sweep_id]
    elif with_points:
        for run in runs:
            if has_finished_point(client, experiment_id, run.info.run_id):
                return run
    return runs[0] if runs else None


def recorded_grid(parent) -> dict[str, tuple]:
    """A sweep's grid as its parent run recorded it: each ``grid.<dim>`` param decoded to a tuple of values of
    the dimension's recorded type (inferred from the text for sweeps written before types were recorded).

    Compare it with a launch's grid as values, ``recorded_grid(run) == {dim: tuple(values) ...}``, not as text.
    """
    return _parent_values(parent)[1]


def _parent_values(parent) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The parent run's fixed protocol values and grid, typed."""
    decode = _decoder(schema.decode_types(parent.data.tags.get(schema.TAG_PARAM_TYPES)))
    grid, fixed = {}, {}
    for key, text in parent.data.params.items():
        if key.startswith(schema.GRID_PREFIX):
            dim = key[len(schema.GRID_PREFIX):]
            grid[dim] = decode(dim, text, grid=True)
        else:
            fixed[key] = decode(key, text)
    return fixed, grid


def _decoder(kinds: Mapping[str, str]):
    def decode(name: str, text: str, grid: bool = False) -> Any:
        kind = kinds.get(name)
        if grid:  # a dimension's values, comma-joined
            if kind is None:
                return tuple(schema.infer(part.strip()) for part in text.split(","))
            if not kind.startswith("tuple["):
                kind = f"tuple[{kind.rstrip('?')}]"
        try:
            return schema.decode(text, kind, name)
        except schema.DecodeError:
            return schema.infer(text)

    return decode


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """A client on the store (resolved as every command resolves it); :class:`SweepNotFound` if there is none."""
    from mlflow.tracking import MlflowClient  # here, not at import: a launcher loads this module before Ray starts

    try:
        uri = resolve_tracking_uri(tracking_uri)
    except StoreError as error:
        raise SweepNotFound(str(error)) from None
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # reading creates nothing
        raise SweepNotFound(f"no tracking store at {db}")
    return MlflowClient(uri), uri


def read_sweep(experiment: str, tracking_uri: str | None = None, sweep_id: str | None = None,
               study: str | None = None, any_state: bool = False) -> SweepRecord:
    """Sweep ``sweep_id`` with its FINISHED point runs; default: the experiment's latest sweep (of ``study`` if
    given) with finished points, so a launch that failed before any point finished is not "the latest"
    (``any_state``: the latest sweep whatever its state)."""
    client, uri = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SweepNotFound(f"no experiment {experiment!r} in {uri}")
    parent = find_sweep(client, found.experiment_id, study, sweep_id, with_points=not any_state)
    if parent is None:
        raise SweepNotFound(f"no {study + ' ' if study else ''}sweep{' ' + sweep_id if sweep_id else ''} "
                            f"in experiment {experiment!r} ({uri})")
    tags = parent.data.tags
    kinds = schema.decode_types(tags.get(schema.TAG_PARAM_TYPES))
    decode = _decoder(kinds)
    fixed, grid = _parent_values(parent)
    rows, stopped, seen, duplicates, start_times = [], [], set(), [], {}
    children = point_runs(client, found.experiment_id, parent.info.run_id)
    for run in children:  # newest first
        if run.info.status != "FINISHED":
            continue
        point = run.data.tags.get(schema.TAG_POINT)
        if point in seen:
            duplicates.append(point)
            continue
        seen.add(point)
        start_times[run.info.run_id] = run.info.start_time
        row = {"run_id": run.info.run_id, "point": point}
        row.update({key: decode(key, text) for key, text in run.data.params.items()})
        row.update({k: v for k, v in run.data.metrics.items() if not schema.is_dim_metric(k)})  # params have them
        if schema.TAG_STOPPED in run.data.tags:
            stopped.append({**row, "stopped_early": int(run.data.tags[schema.TAG_STOPPED])})
        else:
            rows.append(row)
    n_points = tags.get(schema.TAG_N_POINTS)
    return SweepRecord(
        client=client, tracking_uri=uri, experiment_id=found.experiment_id, experiment=experiment,
        sweep_id=parent.info.run_id, study=tags.get(schema.TAG_STUDY, ""), name=parent.info.run_name,
        status=parent.info.status, start_time=parent.info.start_time, command=tags.get(schema.TAG_COMMAND),
        fixed=fixed, grid=grid,
        expected_points=int(n_points) if n_points else (math.prod(map(len, grid.values())) if grid else len(rows)),
        runs=pd.DataFrame(rows), stopped=pd.DataFrame(stopped), duplicate_points=sorted(set(duplicates)),
        unfinished_points=sorted({r.data.tags.get(schema.TAG_POINT) for r in children} - seen),
        param_types=kinds, start_times=start_times,
    )


@dataclass(frozen=True)
class SweepSummary:
    """One sweep of a store as :func:`list_sweeps` lists it.

    n_finished: points with a FINISHED run (stopped early or not); n_points: the points it was launched with.
    start_time, end_time: ms since the epoch (end None while running); duration_s: end - start (None while running).
    findings: the metrics on the parent run (the analysis's findings, a search's ``best_<metric>``).
    """

    experiment: str
    sweep_id: str
    name: str
    study: str
    status: str
    n_finished: int
    n_points: int | None
    start_time: int | None
    end_time: int | None
    command: str | None
    findings: dict[str, float]

    @property
    def duration_s(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time) / 1000

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (times as ms since the epoch, as MLflow has them), with ``duration_s``."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "duration_s": self.duration_s}


def list_sweeps(tracking_uri: str | None = None, experiment: str | None = None, study: str | None = None,
                status: str | None = None) -> list[SweepSummary]:
    """The sweeps of a store (of one experiment, one study, one run status if given), newest first.

    :class:`SweepNotFound` if there is no store or no such experiment; an empty list if nothing matches.
    """
    client, uri = _client(tracking_uri)
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise SweepNotFound(f"no experiment {experiment!r} in {uri}")
        experiments = [found]
    else:
        experiments = client.search_experiments()
    out = []
    for exp in experiments:
        for run in sweep_runs(client, exp.experiment_id, study):
            if status is not None and run.info.status != status:
                continue
            tags = run.data.tags
            statuses = point_statuses(client, exp.experiment_id, run.info.run_id)
            n_points = tags.get(schema.TAG_N_POINTS)
            out.append(SweepSummary(
                experiment=exp.name, sweep_id=run.info.run_id, name=run.info.run_name,
                study=tags.get(schema.TAG_STUDY, ""),
                status=run.info.status, n_finished=sum("FINISHED" in s for s in statuses.values()),
                n_points=int(n_points) if n_points else None, start_time=run.info.start_time,
                end_time=run.info.end_time if run.info.status != "RUNNING" else None,
                command=tags.get(schema.TAG_COMMAND), findings=dict(sorted(run.data.metrics.items())),
            ))
    out.sort(key=lambda s: -(s.start_time or 0))
    return out
