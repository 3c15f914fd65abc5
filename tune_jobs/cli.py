"""The command line every study shares: grid and protocol overrides, tracking, Ray resources."""

from __future__ import annotations

import argparse
import math
import sys
import typing
from dataclasses import dataclass
from typing import Any

from analysis.common import exit_process  # noqa: F401  (the launchers exit through it too)
from record.schema import DecodeError, decode, encode, type_name
from record.store import StoreError, resolve_tracking_uri
from tune_jobs.study import BUILTIN_PACKAGE, Study


class UsageError(ValueError):
    """A bad command-line value; the launcher prints it and exits with status 2."""


def parse_value(study: Study, key: str, text: str) -> Any:
    """Convert ``text`` to the type of config field ``key`` (the record's codec: :func:`record.schema.decode`)."""
    try:
        return decode(text, type_name(study.field_types[key]), key)
    except DecodeError as error:
        raise UsageError(str(error)) from None


def _split_assignment(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{option} takes KEY=VALUE, got {text!r}")
    return key.strip(), value


@dataclass(frozen=True)
class Launch:
    """A validated launch request: the points to run and where/how to run them."""

    study: Study
    study_ref: str
    grid: dict[str, tuple]
    fixed: dict[str, Any]
    points: list[Any]
    tracking_uri: str
    experiment: str
    address: str | None
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    max_failures: int
    points_per_trial: int
    resume: str | None
    force: bool
    storage_path: str | None
    analyze_out: str | None
    switches: dict[str, bool]
    tracking_timeout: float
    point_timeout: float | None
    wait_for_resources: bool
    log_models: bool = False
    checkpoint_every: int | None = None
    keep_checkpoints: bool = False


def build_parser(study: Study, prog: str) -> argparse.ArgumentParser:
    dims = ", ".join(f"{d} (default {encode(v)})" for d, v in study.grid.items())
    fixed = ", ".join(f"{k}={encode(v)}" for k, v in study.defaults().items())
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{study.description}\n\nGrid dimensions: {dims}.\nProtocol values: {fixed}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = parser.add_argument_group("grid and protocol")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="replace one grid dimension's values (repeatable); keys are the MLflow param names")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one fixed protocol value (repeatable), e.g. --set epochs=50")
    t = parser.add_argument_group("tracking (MLflow)")
    t.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db "
                        "with artifacts under mlruns/artifacts/)")
    t.add_argument("--experiment", default=study.name, help="MLflow experiment name (default: %(default)s)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="SWEEP_ID",
                   help="continue an interrupted sweep (default: the experiment's latest) instead of starting one; "
                        "finished grid points are not run again. Refused while another launch holds the sweep's "
                        "lease (renewed every 15 s, expires after 60 s)")
    t.add_argument("--force", action="store_true",
                   help="with --resume: take the sweep over although its lease looks fresh (its launch's machine "
                        "died less than 60 s ago)")
    t.add_argument("--tracking-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on a tracking server that stops answering after about this long (default: "
                        "%(default)g; MLflow's own retries take up to a third of it, so a server back within "
                        "~30 s loses nothing); then the launch stops and says how to resume")
    r = parser.add_argument_group("compute (Ray)")
    r.add_argument("--address", default=None,
                   help="join an existing Ray cluster ('auto' finds a local one); default: start a local Ray "
                        "on this machine, bound to 127.0.0.1")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per Ray trial (default: 1)")
    r.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs reserved per Ray trial, fractions allowed (default: 0)")
    r.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many Ray trials at once (default: as many as resources allow)")
    r.add_argument("--max-failures", type=int, default=0, help="retries of a failed Ray trial (default: 0)")
    r.add_argument("--points-per-trial", type=int, default=study.points_per_trial,
                   help="grid points one Ray trial computes in sequence (default: %(default)s; each point is still "
                        "its own MLflow run)")
    r.add_argument("--storage-path", default=None,
                   help="where Ray Tune keeps its experiment state, on the launching machine (default: "
                        "~/ray_results; created readable by you only); checkpoints live in the MLflow runs")
    r.add_argument("--point-timeout", type=float, default=study.point_timeout, metavar="SECONDS",
                   help="fail a point that runs longer than this; 0 for none (default: "
                        + (f"{study.point_timeout:g}" if study.point_timeout else "none") + ")")
    r.add_argument("--wait-for-resources", action="store_true",
                   help="wait for a node that can hold a Ray trial (a cluster whose autoscaler adds nodes); "
                        "by default a request no node can meet exits with status 2 before any Ray trial")
    m = parser.add_argument_group("models and checkpoints")
    m.add_argument("--log-models", action=argparse.BooleanOptionalAction, default=study.log_models,
                   help="log each finished point's trained model to its run as model/state_dict.pt + model.json "
                        "(default: " + ("on" if study.log_models else "off") + " for this study)")
    if study.checkpoints:
        m.add_argument("--checkpoint-every", default="auto", metavar="N|auto",
                       help="checkpoint a point every N epochs into its MLflow run; auto (default): whenever the "
                            "time trained since the last checkpoint is at least 20x what that one cost (<= 5%%)")
        m.add_argument("--keep-checkpoints", action="store_true",
                       help="keep a finished point's last checkpoint in its run (default: deleted when it finishes)")
    if study.options:
        s = parser.add_argument_group(f"{study.name} options")
        for option in study.options:
            if option.field is None:
                s.add_argument(option.flag, action="store_true", help=option.help)
            else:
                s.add_argument(option.flag, dest=f"set_{option.field}", metavar=option.field.upper(), default=None,
                               help=option.help + f" (same as --set {option.field}=...)")
    parser.add_argument("--analyze", metavar="DIR",
                        default=f"results/{study.name}" if study.analyze_by_default else None,
                        help=("after the sweep, run this study's analysis into DIR and its validation checks"
                              + (" (default: %(default)s)" if study.analyze_by_default else ""))
                        if study.analysis is not None else "this study declares no analysis: refused")
    return parser


def parse_launch(study: Study, argv: list[str] | None, study_ref: str | None = None) -> Launch:
    """Parse and validate everything; raise :class:`UsageError` naming the bad key or value.

    ``study_ref`` is how Ray workers import the study (``module:ATTR``; default: the built-in of that name).
    """
    study_ref = study_ref or f"{BUILTIN_PACKAGE}.{study.name}:STUDY"
    shown = study_ref.removesuffix(":STUDY").removeprefix(f"{BUILTIN_PACKAGE}.")
    args = build_parser(study, f"python -m tune_jobs {shown}").parse_args(argv)
    grid = {d: tuple(v) for d, v in study.grid.items()}
    for text in args.grid:
        key, value = _split_assignment("--grid", text)
        if key not in study.grid:
            raise UsageError(f"--grid: unknown grid dimension {key!r}; grid dimensions: {', '.join(study.grid)}"
                             + (f" (use --set {key}=... for a fixed value)" if key in study.fixed_fields else ""))
        values = tuple(parse_value(study, key, v) for v in value.split(",") if v.strip())
        if not values:
            raise UsageError(f"--grid: {key} needs at least one value, got {value!r}")
        if len(set(values)) != len(values):
            raise UsageError(f"--grid: {key} repeats a value: {value!r}")
        grid[key] = values
    fixed = study.defaults()
    for text in args.set:
        key, value = _split_assignment("--set", text)
        if key not in fixed:
            hint = f" (it is a grid dimension: use --grid {key}=...)" if key in study.grid else ""
            raise UsageError(f"--set: unknown protocol value {key!r}{hint}; known: {', '.join(fixed)}")
        fixed[key] = parse_value(study, key, value)
    for option in study.options:
        if option.field is not None and getattr(args, f"set_{option.field}") is not None:
            fixed[option.field] = parse_value(study, option.field, getattr(args, f"set_{option.field}"))
    for name, value in (("--cpus-per-trial", args.cpus_per_trial), ("--gpus-per-trial", args.gpus_per_trial)):
        if value < 0:
            raise UsageError(f"{name} must be >= 0, got {value}")
    if args.cpus_per_trial == 0 and args.gpus_per_trial == 0:
        raise UsageError("--cpus-per-trial and --gpus-per-trial cannot both be 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.points_per_trial < 1 or (study.checkpoints and args.points_per_trial != 1):
        raise UsageError(f"--points-per-trial must be {'1 for this checkpointing study' if study.checkpoints else '>= 1'}"
                         f", got {args.points_per_trial}")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures must be >= 0, got {args.max_failures}")
    if not args.experiment.strip() or len(args.experiment) > 500 or args.experiment != args.experiment.strip():
        raise UsageError(f"--experiment must be a non-empty name of at most 500 characters without surrounding "
                         f"spaces, got {args.experiment!r}")
    if args.tracking_timeout < 10 or not math.isfinite(args.tracking_timeout):
        raise UsageError(f"--tracking-timeout must be >= 10 seconds, got {args.tracking_timeout:g}")
    if args.point_timeout is not None and (args.point_timeout < 0 or not math.isfinite(args.point_timeout)):
        raise UsageError(f"--point-timeout must be >= 0 seconds (0: none), got {args.point_timeout:g}")
    checkpoint_every = None
    if study.checkpoints and args.checkpoint_every != "auto":
        try:
            checkpoint_every = int(args.checkpoint_every)
        except ValueError:
            checkpoint_every = 0
        if checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every must be a whole number of epochs >= 1 or 'auto', "
                             f"got {args.checkpoint_every!r}")
    if args.force and not args.resume:
        raise UsageError("--force goes with --resume")
    try:
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
    except StoreError as error:
        raise UsageError(f"--tracking-uri: {error}") from None
    if args.analyze is not None and study.analysis is None:
        raise UsageError(f"--analyze: study {study.name!r} declares no analysis")
    try:
        points = study.points(grid, fixed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Launch(
        study=study, study_ref=study_ref, grid=grid, fixed=fixed, points=points, tracking_uri=tracking_uri,
        experiment=args.experiment, address=args.address, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        points_per_trial=args.points_per_trial,
        resume=args.resume, force=args.force, storage_path=args.storage_path, analyze_out=args.analyze,
        tracking_timeout=args.tracking_timeout, point_timeout=args.point_timeout or None,
        wait_for_resources=args.wait_for_resources, log_models=args.log_models,
        checkpoint_every=checkpoint_every, keep_checkpoints=study.checkpoints and args.keep_checkpoints,
        switches={o.flag.lstrip("-").replace("-", "_"): getattr(args, o.flag.lstrip("-").replace("-", "_"))
                  for o in study.options if o.field is None},
    )


def fail_usage(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
