"""The search flags, checked together: ``--search``, ``--space``, ``--num-samples``, ``--metric``/``--mode`` and
the scheduler's, as a :class:`tune_jobs.launch.Search` or a :class:`UsageError` naming the flag."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from record.schema import DecodeError, decode, decode_number, type_name
from tune_jobs.launch import Search, UsageError
from tune_jobs.space import SpaceError, parse_dimension
from tune_jobs.study import Study


def parse_value(study: Study, key: str, text: str) -> Any:
    """``text`` as the value of config field ``key`` (the record's codec, :func:`record.schema.decode`), or of an
    open param (``loss.q``: a number or true/false, checked against its default once its owner is loaded)."""
    try:
        if "." in key and study.is_key(key):
            return decode_number(text, key)
        return decode(text, type_name(study.field_types[key]), key)
    except DecodeError as error:
        raise UsageError(f"--set: {error}" if "." in key else str(error)) from None


def split_assignment(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{option} takes KEY=VALUE, got {text!r}")
    return key.strip(), value


def parse_search(study: Study, args: argparse.Namespace, grid: dict[str, tuple]) -> Search:
    """The search flags, checked together: what Ray Tune can do with them, else a UsageError naming the flag."""
    space, gridded = [], {split_assignment("--grid", t)[0] for t in args.grid}
    for text in args.space:
        key, value = split_assignment("--space", text)
        if not study.is_key(key):
            raise UsageError(f"--space: unknown key {key!r}; keys are config fields ({', '.join(study.field_types)})"
                             + "".join(f" or {p}.NAME" for p in study.open_params))
        if key in [d.key for d in space]:
            raise UsageError(f"--space: {key} is given twice")
        if key in gridded:
            raise UsageError(f"--space {key}: it is also given with --grid; search it or grid it, not both (a "
                             "searched key replaces its grid dimension)")
        try:
            space.append(parse_dimension(key, value, lambda v, k=key: parse_value(study, k, v)))
        except SpaceError as error:
            raise UsageError(str(error)) from None
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.search == "grid" and space:
        raise UsageError("--space needs --search random or --search optuna (grid search runs the --grid points)")
    if args.search == "grid" and args.num_samples != 1:
        raise UsageError("--num-samples repeats samples of a --space; a grid point runs once (repeat seeds with "
                         "--grid seed=...)")
    if args.search != "grid" and not space:
        raise UsageError(f"--search {args.search} needs at least one --space KEY=DIST(...)")
    if (args.metric is None) != (args.mode is None):
        raise UsageError("--metric and --mode go together")
    needs_metric = [f for f, on in (("--search optuna", args.search == "optuna"),
                                    ("--scheduler asha", args.scheduler == "asha")) if on]
    if needs_metric and args.metric is None:
        raise UsageError(f"{needs_metric[0]} needs --metric NAME and --mode max|min")
    if args.metric is not None and args.metric not in study.search_metrics:
        known = ", ".join(study.search_metrics) or "none"
        raise UsageError(f"--metric {args.metric}: searchers and schedulers select on validation metrics only "
                         f"(this study's: {known}); test metrics are for the final report")
    searched = {d.key for d in space}
    swept = next((k for k, v in grid.items() if len(v) > 1 and k not in searched), None)
    if args.search == "optuna" and swept is not None:
        raise UsageError(f"--search optuna takes no grid: {swept} has {len(grid[swept])} values; give it as "
                         f"--space {swept}=choice(...), or fix it with --grid {swept}=VALUE")
    if args.scheduler == "asha":
        if not study.reports_epochs:
            raise UsageError(f"--scheduler asha: {study.name} reports only at the end of a point (no epochs to stop "
                             "between)")
        if args.grace_period < 1:
            raise UsageError(f"--grace-period must be >= 1 epoch, got {args.grace_period}")
        if not args.reduction_factor > 1:
            raise UsageError(f"--reduction-factor must be > 1, got {args.reduction_factor:g}")
    return Search(algorithm=args.search, space=tuple(space), num_samples=args.num_samples, metric=args.metric,
                  mode=args.mode, scheduler=args.scheduler, grace_period=args.grace_period,
                  reduction_factor=args.reduction_factor, seed=args.search_seed)


def with_points(search: Search, study: Study, points: list[Any]) -> tuple[Search, list[Any]]:
    """The search with its bounds' configs (every sample is a valid config: its bounds must be), and the points a
    random search of cheap points samples here (seeded) to pack into Ray trials like a grid's."""
    bounds = []
    for dimension in search.space:
        for bound in dimension.bounds():
            try:
                bounds.append(study.make_config({**dataclasses.asdict(points[0]), dimension.key: bound}))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"--space {dimension.key}={dimension.describe()}: {exc}") from None
    search = dataclasses.replace(search, bounds=tuple(bounds))
    if search.algorithm == "random" and search.scheduler == "fifo" and study.points_per_trial > 1:
        import numpy as np

        rng = np.random.default_rng(search.seed)
        points = [study.make_config({**dataclasses.asdict(p), **{d.key: d.sample(rng) for d in search.space}})
                  for p in points for _ in range(search.num_samples)]
        search = dataclasses.replace(search, packed=True)
    return search, points
