"""The command line every study shares: ``--help`` in the groups of :class:`tune_jobs.launch.Launch`, and
:func:`parse_launch`, which validates everything before Ray starts (a :class:`UsageError` names the bad value)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

from analysis.common import exit_process  # noqa: F401  (the launchers exit through it too)
from core.validation import check_int, check_real, field_rules
from record.schema import encode
from record.store import StoreError, resolve_tracking_uri
from tune_jobs.config_file import expand_config
from tune_jobs.launch import FEW_POINTS, PROGRESS, Compute, Launch, Outputs, Tracking, UsageError
from tune_jobs.search import parse_search, parse_value, split_assignment, with_points
from tune_jobs.study import BUILTIN_PACKAGE, SEEDS, Study


def _seeds(text: str, also_grid: bool) -> tuple[int, ...]:
    """``--seeds``: N (the first N of :data:`tune_jobs.study.SEEDS`) or an explicit comma-separated list."""
    if also_grid:
        raise UsageError("--seeds and --grid seed=... both set the seeds: give one")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or any(n < 0 for n in numbers):
        raise UsageError(f"--seeds must be a count N >= 1 or a list of seeds >= 0, got {text!r}")
    if len(numbers) == 1 and "," not in text:
        if not 1 <= numbers[0] <= len(SEEDS):
            raise UsageError(f"--seeds N takes 1 <= N <= {len(SEEDS)}, got {numbers[0]}")
        return SEEDS[:numbers[0]]
    if len(set(numbers)) != len(numbers):
        raise UsageError(f"--seeds repeats a seed: {text!r}")
    return tuple(numbers)


def _protocol_flags(parser: argparse.ArgumentParser, study: Study) -> None:
    """Grid and protocol: what to run."""
    g = parser.add_argument_group("grid and protocol")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="replace one grid dimension's values (repeatable); keys are the MLflow param names")
    if "seed" in study.grid:
        g.add_argument("--seeds", default=None, metavar="N|S1,S2,...",
                       help="the seed dimension: the first N of the fixed list 42, 123, 7, 1, 2, 3, 4, 5, 6, 8, ... "
                            "(--seeds 10: 42, 123, 7, 1, 2, 3, 4, 5, 6, 8), or these seeds (same as --grid seed=...)")
    g.add_argument("--config", metavar="FILE.yaml",
                   help="read flags from a YAML mapping (the flags' names as keys; see README); flags given on the "
                        "command line come after it")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one fixed protocol value (repeatable), e.g. --set epochs=50")


def _tracking_flags(parser: argparse.ArgumentParser, study: Study) -> None:
    """Tracking (MLflow): where the sweep is recorded."""
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


def _compute_flags(parser: argparse.ArgumentParser, study: Study) -> None:
    """Compute (Ray): what runs the points."""
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


def _search_flags(parser: argparse.ArgumentParser, study: Study) -> None:
    """Search and early stopping (Ray Tune)."""
    q = parser.add_argument_group("search and early stopping (Ray Tune)")

    def shown(text: str) -> str:  # the scheduler's flags, for studies that report every epoch (else refused)
        return text if study.reports_epochs else argparse.SUPPRESS

    q.add_argument("--search", choices=("grid", "random", "optuna"), default="grid",
                   help="grid (default): every --grid point; random: Ray Tune's random sampling of --space; optuna: "
                        "Ray Tune's OptunaSearch (TPE) over --space, guided by --metric/--mode")
    q.add_argument("--space", action="append", default=[], metavar="KEY=DIST(ARGS)",
                   help="a searched key (repeatable): uniform(low,high), loguniform(low,high), randint(low,high) "
                        "(high exclusive) or choice(v1,v2,...); e.g. --space lr=loguniform(0.01,0.3)"
                        + (", --space " + next(iter(study.open_params)) + ".NAME=..." if study.open_params else ""))
    q.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="samples of the space per grid point, as Ray Tune's num_samples (default: 1)")
    q.add_argument("--metric", default=None,
                   help="what the searcher/scheduler optimises: " + ", ".join(study.search_metrics)
                        + " (validation metrics)" if study.search_metrics else argparse.SUPPRESS)
    q.add_argument("--mode", choices=("max", "min"), default=None,
                   help="maximise or minimise --metric" if study.search_metrics else argparse.SUPPRESS)
    q.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                   help=shown("fifo (default): every point runs to the end; asha: Ray Tune's ASHAScheduler stops "
                              "poor points early"))
    q.add_argument("--grace-period", type=int, default=1, metavar="EPOCHS",
                   help=shown("asha: epochs every point runs before it may be stopped (default: 1)"))
    q.add_argument("--reduction-factor", type=float, default=3.0, metavar="F",
                   help=shown("asha: keep the best 1/F at each rung (default: 3)"))
    q.add_argument("--search-seed", type=int, default=0, metavar="N",
                   help="seed of the random sampler / Optuna's TPE (default: 0; the same launch samples the same "
                        "points)")


def _output_flags(parser: argparse.ArgumentParser, study: Study) -> None:
    """What each point leaves in its run, and the analysis after the sweep."""
    m = parser.add_argument_group("models, checkpoints and outputs")
    m.add_argument("--log-models", action=argparse.BooleanOptionalAction, default=study.log_models,
                   help="log each finished point's trained model as an MLflow logged model of its run "
                        "(default: " + ("on" if study.log_models else "off") + " for this study)")
    default_interval = f"every {study.system_metrics:g} s" if study.system_metrics else "0, off"
    m.add_argument("--system-metrics", type=float, default=study.system_metrics, metavar="SECONDS",
                   help="sample CPU, memory, disk, network (and GPU) every SECONDS into each point's run as MLflow's "
                        f"system/* metrics; 0: off (default for this study: {default_interval})")
    if study.checkpoints:
        m.add_argument("--checkpoint-every", default="auto", metavar="N|auto",
                       help="checkpoint a point every N epochs into its MLflow run; auto (default): whenever the "
                            "time trained since the last checkpoint is at least 20x what that one cost (<= 5%%)")
        m.add_argument("--keep-checkpoints", action="store_true",
                       help="keep a finished point's last checkpoint in its run (default: deleted when it finishes)")
    m.add_argument("--analyze", metavar="DIR", default=None,
                   help=("after the sweep, run this study's analysis into DIR and its validation checks"
                         + (" (default: results/EXPERIMENT, the --experiment name: results/"
                            f"{study.name} unless you name another experiment)" if study.analyze_by_default else ""))
                   if study.analysis is not None else argparse.SUPPRESS)
    m.add_argument("--progress", choices=PROGRESS, default="auto",
                   help="console lines while the sweep runs: points (one per finished point), epochs (also one per "
                        "epoch of every point reporting epochs live: checkpointing studies, or under a scheduler), none (the first and last lines only); auto (default): one per "
                        f"point, and for a launch of at most {FEW_POINTS} points one per 10%% of a point's epochs")


def _study_flags(parser: argparse.ArgumentParser, study: Study) -> None:
    """The study's own flags (aliases of --set, or switches for its prepare step)."""
    if study.options:
        s = parser.add_argument_group(f"{study.name} options")
        for option in study.options:
            if option.field is None:
                s.add_argument(option.flag, action="store_true", help=option.help)
            else:
                s.add_argument(option.flag, dest=f"set_{option.field}", metavar=option.field.upper(), default=None,
                               help=option.help + f" (same as --set {option.field}=...)")


def build_parser(study: Study, prog: str) -> argparse.ArgumentParser:
    """The launcher's parser for ``study``: its grid and protocol (with each field's rule) first, then the flag
    groups of :class:`tune_jobs.launch.Launch`."""
    rules = field_rules(study.config_type)

    def rule(key: str) -> str:
        return f"; {rules[key].describe()}" if key in rules else ""

    dims = ", ".join(f"{d} (default {encode(v)}{rule(d)})" for d, v in study.grid.items())
    fixed = ", ".join(f"{k}={encode(v)}" + (f" ({rule(k)[2:]})" if k in rules else "")
                      for k, v in study.defaults().items())
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{study.description}\n\nGrid dimensions: {dims}.\nProtocol values: {fixed}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in (_protocol_flags, _tracking_flags, _compute_flags, _search_flags, _output_flags, _study_flags):
        add(parser, study)
    return parser


def _check_flags(study: Study, args: argparse.Namespace) -> None:
    """Each flag's own rule, in one message shape: ``--flag must be <rule>, got <value>``."""
    try:
        check_real("--cpus-per-trial", args.cpus_per_trial, 0)
        check_real("--gpus-per-trial", args.gpus_per_trial, 0)
        if args.max_concurrent is not None:
            check_int("--max-concurrent", args.max_concurrent, 1)
        check_int("--max-failures", args.max_failures, 0)
        check_real("--point-timeout", args.point_timeout or 0, 0)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.cpus_per_trial == 0 and args.gpus_per_trial == 0:
        raise UsageError("--cpus-per-trial and --gpus-per-trial cannot both be 0")
    if args.points_per_trial < 1 or (study.checkpoints and args.points_per_trial != 1):
        raise UsageError(f"--points-per-trial must be {'1 for this checkpointing study' if study.checkpoints else '>= 1'}"
                         f", got {args.points_per_trial}")
    name = args.experiment
    if (not name.strip() or len(name) > 500 or name != name.strip() or name.startswith("/")
            or ".." in name.replace("\\", "/").split("/")):
        raise UsageError(f"--experiment must be a non-empty name of at most 500 characters without surrounding "
                         f"spaces, a leading / or a '..' part, got {name!r}")
    if not (math.isfinite(args.tracking_timeout) and args.tracking_timeout >= 10):
        raise UsageError(f"--tracking-timeout must be >= 10 seconds, got {args.tracking_timeout:g}")
    if not (args.system_metrics == 0 or 1 <= args.system_metrics < math.inf):
        raise UsageError(f"--system-metrics must be 0 (off) or an interval >= 1 second, got {args.system_metrics:g}")
    if args.force and not args.resume:
        raise UsageError("--force goes with --resume")
    if args.analyze is not None and study.analysis is None:
        raise UsageError(f"--analyze: study {study.name!r} declares no analysis")


def _checkpoint_every(study: Study, text: str | None) -> int | None:
    """``--checkpoint-every N|auto``: N epochs, or None for auto (and for a study that does not checkpoint)."""
    if not study.checkpoints or text == "auto":
        return None
    try:
        every = int(text)
    except ValueError:
        every = 0
    if every < 1:
        raise UsageError(f"--checkpoint-every must be a whole number of epochs >= 1 or 'auto', got {text!r}")
    return every


def _grid(study: Study, args: argparse.Namespace) -> dict[str, tuple]:
    """The grid: the study's, with each ``--grid`` and ``--seeds`` dimension replaced."""
    grid = {d: tuple(v) for d, v in study.grid.items()}
    for text in args.grid:
        key, value = split_assignment("--grid", text)
        if key not in study.grid:
            raise UsageError(f"--grid: unknown grid dimension {key!r}; grid dimensions: {', '.join(study.grid)}"
                             + (f" (use --set {key}=... for a fixed value)" if key in study.fixed_fields else ""))
        values = tuple(parse_value(study, key, v) for v in value.split(",") if v.strip())
        if not values:
            raise UsageError(f"--grid: {key} needs at least one value, got {value!r}")
        if len(set(values)) != len(values):
            raise UsageError(f"--grid: {key} repeats a value: {value!r}")
        grid[key] = values
    if getattr(args, "seeds", None) is not None:
        grid["seed"] = _seeds(args.seeds, any(split_assignment("--grid", t)[0] == "seed" for t in args.grid))
    return grid


def _fixed(study: Study, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The protocol values (the study's defaults, ``--set`` and option aliases applied) and the open params set."""
    fixed, opened = study.defaults(), {}
    for text in args.set:
        key, value = split_assignment("--set", text)
        if "." in key and study.is_key(key):
            opened[key] = parse_value(study, key, value)
            continue
        if key not in fixed:
            hint = f" (it is a grid dimension: use --grid {key}=...)" if key in study.grid else ""
            raise UsageError(f"--set: unknown protocol value {key!r}{hint}; known: {', '.join(fixed)}"
                             + "".join(f", {p}.NAME" for p in study.open_params))
        fixed[key] = parse_value(study, key, value)
    for option in study.options:
        if option.field is not None and getattr(args, f"set_{option.field}") is not None:
            fixed[option.field] = parse_value(study, option.field, getattr(args, f"set_{option.field}"))
    return fixed, opened


def _check_reported(study: Study, metric: str, points: list[Any], overridden: dict[str, Any]) -> None:
    """``--metric`` must be a metric every point of the launch reports (a point without it would stop the whole
    Ray Tune run): else a UsageError naming it and the ones a searcher may select on here."""
    if not points:
        return
    reported = set.intersection(*(study.reports(p) for p in points))
    if metric in reported:
        return
    allowed = [m for m in study.search_metrics if m in reported]
    hint = "".join(f" (--set {k}={encode(v)} overrides this study's search default {k}={encode(study.search_defaults[k])})"
                   for k, v in overridden.items() if v != study.search_defaults[k])
    raise UsageError(f"--metric {metric}: the points of this launch do not report it; a metric they report that a "
                     f"searcher may select on: {', '.join(allowed) or 'none'}{hint}")


def parse_launch(study: Study, argv: list[str] | None, study_ref: str | None = None) -> Launch:
    """Parse and validate everything; raise :class:`UsageError` naming the bad key or value.

    ``study_ref`` is how Ray workers import the study (``module:ATTR``; default: the built-in of that name).
    """
    study_ref = study_ref or f"{BUILTIN_PACKAGE}.{study.name}:STUDY"
    shown = study_ref.removesuffix(":STUDY").removeprefix(f"{BUILTIN_PACKAGE}.")
    parser = build_parser(study, f"python -m tune_jobs {shown}")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(expand_config(parser, argv))
    grid = _grid(study, args)
    fixed, opened = _fixed(study, args)
    _check_flags(study, args)
    try:
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
    except StoreError as error:
        raise UsageError(f"--tracking-uri: {error}") from None
    search = parse_search(study, args, grid)
    for dimension in search.space:  # a searched grid key replaces its dimension: one base value, then sampled
        if dimension.key in grid:
            grid[dimension.key] = grid[dimension.key][:1]
    explicit = {split_assignment("--set", t)[0] for t in args.set}
    if search.metric is not None:  # a validation split for the searcher / scheduler, unless --set says otherwise
        fixed.update({k: v for k, v in study.search_defaults.items() if k not in explicit})
    if opened:
        fixed = {k: v for k, v in dataclasses.asdict(study.make_config({**study.first_point(grid), **fixed,
                                                                           **opened})).items() if k not in study.grid}
    try:
        points = study.points(grid, fixed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    search, points = with_points(search, study, points)
    if search.metric is not None:
        _check_reported(study, search.metric, points, {k: fixed[k] for k in explicit if k in study.search_defaults})
    point_dims = None
    if search.space:  # points are named by the swept grid dimensions and the searched keys
        keys = [d.key for d in search.space]
        point_dims = tuple(d for d in study.grid if len(grid[d]) > 1 and d not in keys) + tuple(keys)
    switches = {o.flag.lstrip("-").replace("-", "_") for o in study.options if o.field is None}
    return Launch(
        study=study, study_ref=study_ref, grid=grid, fixed=fixed, points=points, point_dims=point_dims,
        argv=tuple(argv), switches={name: getattr(args, name) for name in switches}, search=search,
        tracking=Tracking(uri=tracking_uri, experiment=args.experiment, resume=args.resume, force=args.force,
                          timeout=args.tracking_timeout),
        compute=Compute(address=args.address, cpus_per_trial=args.cpus_per_trial,
                        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                        max_failures=args.max_failures, points_per_trial=args.points_per_trial,
                        storage_path=args.storage_path, point_timeout=args.point_timeout or None,
                        wait_for_resources=args.wait_for_resources),
        outputs=Outputs(log_models=args.log_models, system_metrics=args.system_metrics,
                        checkpoint_every=_checkpoint_every(study, getattr(args, "checkpoint_every", None)),
                        keep_checkpoints=study.checkpoints and args.keep_checkpoints,
                        analyze_out=args.analyze or (f"results/{args.experiment}" if study.analyze_by_default
                                                     else None),
                        progress=args.progress),
    )
