"""What every study's analysis shares: read a sweep back from MLflow, write and log the outputs, run checks.

Analyses read MLflow only (never Ray's result folders), so any past sweep in
any tracking store can be analysed again.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import pkgutil
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd

from record.read import SweepNotFound, SweepRecord, read_sweep
from record.runs import ui_link


@dataclass
class Check:
    """One validation check: a name, whether it passed, and what was seen."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class AnalysisOutput:
    """What a study's analysis produced, before it is written and logged."""

    summary: dict[str, Any]
    table: pd.DataFrame
    findings: list[str]
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # intermediate tables the checks reuse
    metrics: dict[str, float] = field(default_factory=dict)  # the findings as MLflow metrics (stable names)


def completeness_checks(sweep: SweepRecord) -> list[Check]:
    """Checks every study shares: all grid points finished, once each."""
    n = sweep.n_finished
    return [
        Check("all grid points finished", n == sweep.expected_points,
              f"{n}/{sweep.expected_points} finished"
              + (f" ({len(sweep.stopped)} stopped early by the scheduler, left out of the tables)"
                 if len(sweep.stopped) else "")
              + (f"; not finished: {', '.join(sweep.unfinished_points[:10])}" if sweep.unfinished_points else "")),
        Check("no duplicate grid points", not sweep.duplicate_points,
              ", ".join(sweep.duplicate_points[:10]) or "none"),
    ]


@dataclass(frozen=True)
class Analysis:
    """A study's analysis, declared with the study.

    analyze:    ``sweep -> AnalysisOutput`` (summary, table, findings, figures).
    checks:     ``sweep, output -> [Check]``: validation of a finished sweep
                (default: every grid point finished, once).
    table_name: file name of the main table (``<table_name>.md`` / ``.csv``).
    """

    analyze: Callable[[SweepRecord], AnalysisOutput]
    checks: Callable[[SweepRecord, AnalysisOutput], list[Check]] = lambda sweep, output: completeness_checks(sweep)
    table_name: str = "table"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``frame`` (cells as already formatted strings or numbers)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _clean_json(value: Any) -> Any:
    """NaN/inf -> None so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    return value


def write_outputs(output: AnalysisOutput, out_dir: Path, table_name: str) -> list[Path]:
    """summary.json, ``<table_name>.md`` / ``.csv`` and the figures as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(output.summary, findings=output.findings)
    paths = [out_dir / "summary.json", out_dir / f"{table_name}.md", out_dir / f"{table_name}.csv"]
    paths[0].write_text(json.dumps(_clean_json(json.loads(json.dumps(summary, default=_json_default))), indent=2) + "\n")
    paths[1].write_text(markdown_table(output.table) + "\n\n" + "\n".join(f"- {f}" for f in output.findings) + "\n")
    output.table.to_csv(paths[2], index=False)
    import matplotlib.pyplot as plt

    for name, figure in output.figures.items():
        paths.append(out_dir / name)
        figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    return paths


def analysis_parser(study: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m analysis.{study}",
        description=f"Analyse a {study} sweep read back from MLflow: summary.json, markdown and CSV tables, "
                    "plots; the files are also logged as an analysis run nested under the sweep.",
    )
    parser.add_argument("--experiment", default=study, help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--sweep-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--out", type=Path, default=Path("results") / study,
                        help="output folder (default: %(default)s)")
    parser.add_argument("--no-log", action="store_true", help="do not log the outputs back to MLflow")
    parser.add_argument("--validate", action="store_true",
                        help="also run the study's validation checks; exit 1 if any fails")
    return parser


def read_finished_sweep(study: str, experiment: str, tracking_uri: str | None, sweep_id: str | None) -> SweepRecord:
    """The sweep to analyse; :class:`SweepNotFound` when there is none or it has no finished runs."""
    sweep = read_sweep(experiment, tracking_uri, sweep_id, study=study)
    if sweep.runs.empty:
        raise SweepNotFound(f"sweep {sweep.sweep_id} in experiment {experiment!r} has no finished runs to analyse")
    return sweep


def search_view(sweep: SweepRecord):
    """For a search sweep with a ``--metric``: the metric against each searched key (one panel each; points a
    scheduler stopped drawn hollow at the value they reached, the best point ringed); else None."""
    keys = [k[len("space."):] for k in sweep.fixed if k.startswith("space.")]
    metric, mode = sweep.fixed.get("metric"), sweep.fixed.get("mode")
    if not keys or not metric or metric not in sweep.runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    best = sweep.runs[metric].idxmax() if mode == "max" else sweep.runs[metric].idxmin()
    for ax, key in zip(axes[0], keys):
        x = pd.to_numeric(sweep.runs[key], errors="coerce")
        ax.scatter(x, sweep.runs[metric], s=22, color="tab:blue", label="complete")
        if len(sweep.stopped) and key in sweep.stopped and metric in sweep.stopped:
            ax.scatter(pd.to_numeric(sweep.stopped[key], errors="coerce"), sweep.stopped[metric], s=22,
                       facecolors="none", edgecolors="tab:gray", label="stopped early")
        ax.scatter([x[best]], [sweep.runs[metric][best]], s=110, facecolors="none", edgecolors="tab:red",
                   label=f"best ({mode})")
        if str(sweep.fixed[f"space.{key}"]).startswith("loguniform"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short ranges
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{sweep.study}: {sweep.fixed.get('search')} search, {metric} against each searched key")
    figure.tight_layout()
    return figure


def run_analysis(analysis: Analysis, study: str, argv: list[str] | None = None,
                 provenance: dict[str, str] | None = None) -> int:
    """Read, analyse, write, log and (``--validate``) check one sweep; the command's exit status.

    ``provenance``: the analysis run's context tags (a launch's ``--analyze`` gives its own), else this command's.
    """
    args = analysis_parser(study).parse_args(argv)
    try:
        sweep = read_finished_sweep(study, args.experiment, args.tracking_uri, args.sweep_id)
    except SweepNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = analysis.analyze(sweep)
    search = search_view(sweep)
    if search is not None:
        output.figures["search.png"] = search
    output.summary.update(study=study, experiment=args.experiment, sweep_id=sweep.sweep_id,
                          n_finished_runs=sweep.n_finished, n_expected_runs=sweep.expected_points,
                          missing_points=sweep.unfinished_points)
    if len(sweep.stopped):
        output.summary["n_stopped_early"] = len(sweep.stopped)
    paths = write_outputs(output, args.out, table_name=analysis.table_name)
    print(markdown_table(output.table))
    print("\nFindings:\n" + "\n".join(f"- {f}" for f in output.findings))
    if len(sweep.stopped):
        print(f"\n{len(sweep.stopped)} point(s) stopped early by the scheduler are left out of the table above")
    if sweep.n_finished < sweep.expected_points:
        print(f"\nwarning: only {sweep.n_finished}/{sweep.expected_points} grid points finished; "
              f"missing: {', '.join(sweep.unfinished_points[:10]) or 'never started'}")
    if not args.no_log:
        from record.provenance import context_tags
        from record.write import log_analysis_run

        if provenance is None:  # run on its own: `python -m analysis.STUDY FLAGS`
            shown = ["python", "-m", f"analysis.{study}", *(sys.argv[1:] if argv is None else argv)]
            provenance = context_tags(shlex.join(shown[:3]), shlex.join(shown), Path(__file__).resolve().parent)
        run_id = log_analysis_run(sweep.client, sweep.experiment_id, sweep.sweep_id, study, paths, output.metrics,
                                  provenance)
        print(f"\nlogged as analysis run {run_id} under sweep {sweep.sweep_id}; MLflow UI: "
              f"{ui_link(sweep.tracking_uri, sweep.experiment_id)}")
    print(f"outputs in {args.out}/: " + ", ".join(p.name for p in paths))
    if args.validate:
        print(f"\nvalidation of sweep {sweep.sweep_id}:")
        return run_checks(analysis.checks(sweep, output))
    return 0


def builtin_analyses() -> dict[str, Analysis]:
    """The analyses of this package, by study name (each module ``analysis.<study>`` that defines ``ANALYSIS``)."""
    import analysis

    found = {}
    for info in pkgutil.iter_modules(analysis.__path__):
        module = importlib.import_module(f"analysis.{info.name}")
        if isinstance(getattr(module, "ANALYSIS", None), Analysis):
            found[info.name] = module.ANALYSIS
    return found


def load_analysis(ref: str) -> tuple[str, Analysis]:
    """``(study name, Analysis)`` for a built-in study name or ``module[:ATTR]``.

    ``ATTR`` defaults to ``ANALYSIS``, else a study declaration ``STUDY`` that
    carries an ``analysis`` (its module may import torch).
    """
    if ":" not in ref and "." not in ref:
        known = builtin_analyses()
        if ref not in known:
            raise SweepNotFound(f"unknown study {ref!r}; built-in: {', '.join(sorted(known))} (or give module:ATTR)")
        return ref, known[ref]
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attr or "ANALYSIS", None) or (None if attr else getattr(module, "STUDY", None))
    if isinstance(target, Analysis):
        return module_name.rpartition(".")[2], target
    if isinstance(getattr(target, "analysis", None), Analysis):
        return target.name, target.analysis
    raise SweepNotFound(f"{ref} holds no Analysis (nor a study declaration that carries one)")


def exit_process(status: int) -> NoReturn:
    """``sys.exit(status)`` for a command's ``__main__``, without the interpreter's last full garbage collection.

    MLflow, pandas (and in launchers torch and Ray) leave up to a million
    objects behind, and walking them at exit is slow.  ``gc.freeze()`` puts
    them out of the collector's reach; reference counting still frees them.
    """
    gc.freeze()
    sys.exit(status)


def map_blocks(func: Callable[..., Any], items: Any, *args: Any) -> list[Any]:
    """``func(block, *args)`` for consecutive blocks of ``items`` (split along its first axis), one block per core
    in forked processes (this machine's cores, at most 8); the results in block order.

    For independent, CPU-bound work on arrays (a bootstrap's refits): every block computes what one process
    would, so the numbers are the same on any number of cores.
    """
    import os

    import numpy as np

    cores = min(len(os.sched_getaffinity(0)), 8, len(items))
    if cores <= 1:
        return [func(items, *args)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    blocks = np.array_split(np.arange(len(items)), cores)
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(func, [items[block] for block in blocks], *([arg] * cores for arg in args)))


def run_checks(checks: list[Check]) -> int:
    """Print each check and return 0 if all passed, else 1."""
    for check in checks:
        print(f"[{'PASS' if check.passed else 'FAIL'}] {check.name}" + (f": {check.detail}" if check.detail else ""))
    failed = [c.name for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("failing checks: " + "; ".join(failed))
    return 1 if failed else 0


def group_stats(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for a single seed) and count of ``columns`` per group."""
    grouped = frame.groupby(by, sort=True)
    out = grouped[columns].mean().add_suffix("_mean")
    std = grouped[columns].std(ddof=1).fillna(0.0).add_suffix("_std")
    out = out.join(std)
    out["n_seeds"] = grouped.size()
    return out.reset_index()

