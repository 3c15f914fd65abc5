"""What every study's analysis shares: analyse a sweep read back from MLflow, write and log the outputs, run checks.

Analyses read MLflow only (never Ray's result folders), so any past sweep in
any tracking store can be analysed again.
"""

from __future__ import annotations

import gc
import json
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd

from record.read import SweepRecord
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
    #: findings over an integer dimension as MLflow metric histories: name (record.schema.curve_key) -> {value of the
    #: dimension (the step): finding}, logged on the analysis run only (the UI plots them against the dimension)
    histories: dict[str, dict[int, float]] = field(default_factory=dict)


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


#: Where ``out_dir`` keeps an earlier sweep's results when another sweep's are written there.
EARLIER = "earlier"


def keep_earlier(out_dir: Path, sweep_id: str) -> Path | None:
    """If ``out_dir`` holds another sweep's results (its ``summary.json`` names another sweep id), move them into
    ``out_dir/earlier/<that sweep id>/`` and return that folder; results are never overwritten by another sweep's."""
    try:
        earlier_id = json.loads((out_dir / "summary.json").read_text())["sweep_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if earlier_id == sweep_id:
        return None
    kept = out_dir / EARLIER / str(earlier_id)
    kept.mkdir(parents=True, exist_ok=True)
    for path in out_dir.iterdir():
        if path.name != EARLIER:
            path.replace(kept / path.name)
    return kept


def write_outputs(output: AnalysisOutput, out_dir: Path, table_name: str) -> list[Path]:
    """summary.json, ``<table_name>.md`` / ``.csv`` and the figures as PNG files in ``out_dir`` (another sweep's
    results there move to ``out_dir/earlier/<its sweep id>/`` first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = keep_earlier(out_dir, str(output.summary.get("sweep_id", "")))
    if kept is not None:
        print(f"{out_dir} held another sweep's results: moved to {kept}")
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


def has_runs(sweep: SweepRecord) -> bool:
    """Whether the sweep has finished runs to analyse; if not, says so on stderr."""
    if sweep.runs.empty:
        print(f"error: sweep {sweep.sweep_id} in experiment {sweep.experiment!r} has no finished runs to analyse",
              file=sys.stderr)
    return not sweep.runs.empty


def run_analysis(analysis: Analysis, sweep: SweepRecord, out: Path, *, validate: bool = False, log: bool = True,
                 provenance: dict[str, str] | None = None) -> int:
    """Analyse one sweep already read (:func:`record.read.read_sweep`), write its outputs to ``out``, log them
    (``log``) as an analysis run under the sweep and (``validate``) run the study's checks; the exit status: 0,
    1 when a check failed, 2 when the sweep has no finished runs to analyse.

    ``provenance``: the analysis run's context tags (the command ``python -m analysis`` or a launch's
    ``--analyze`` gives its own); None: those of the equivalent ``python -m analysis STUDY ...`` command.
    """
    if not has_runs(sweep):
        return 2
    out = Path(out)
    output = analysis.analyze(sweep)
    search = search_view(sweep)
    if search is not None:
        output.figures["search.png"] = search
    output.summary.update(study=sweep.study, experiment=sweep.experiment, sweep_id=sweep.sweep_id,
                          n_finished_runs=sweep.n_finished, n_expected_runs=sweep.expected_points,
                          missing_points=sweep.unfinished_points)
    if len(sweep.stopped):
        output.summary["n_stopped_early"] = len(sweep.stopped)
    paths = write_outputs(output, out, table_name=analysis.table_name)
    print(markdown_table(output.table))
    print("\nFindings:\n" + "\n".join(f"- {f}" for f in output.findings))
    if len(sweep.stopped):
        print(f"\n{len(sweep.stopped)} point(s) stopped early by the scheduler are left out of the table above")
    if sweep.n_finished < sweep.expected_points:
        print(f"\nwarning: only {sweep.n_finished}/{sweep.expected_points} grid points finished; "
              f"missing: {', '.join(sweep.unfinished_points[:10]) or 'never started'}")
    if log:
        from record.provenance import context_tags
        from record.write import log_analysis_run

        if provenance is None:
            shown = ["python", "-m", "analysis", sweep.study, "--experiment", sweep.experiment, "--tracking-uri",
                     sweep.tracking_uri, "--sweep-id", sweep.sweep_id, "--out", str(out)]
            provenance = context_tags(shlex.join(shown[:4]), shlex.join(shown), Path(__file__).resolve().parent)
        from core.stats import BOOTSTRAP_SEED, CONFIDENCE, N_RESAMPLES

        run_id = log_analysis_run(sweep.client, sweep.experiment_id, sweep.sweep_id, sweep.study, paths,
                                  output.metrics, provenance, sweep_name=sweep.name, findings=output.findings,
                                  histories=output.histories,
                                  params={"confidence": CONFIDENCE, "bootstrap_resamples": N_RESAMPLES,
                                          "bootstrap_seed": BOOTSTRAP_SEED})
        print(f"\nlogged as analysis run {run_id} under sweep {sweep.sweep_id}; MLflow UI: "
              f"{ui_link(sweep.tracking_uri, sweep.experiment_id)}")
    print(f"outputs in {out.resolve()}/: " + ", ".join(p.name for p in paths))
    if validate:
        print(f"\nvalidation of sweep {sweep.sweep_id}:")
        return run_checks(analysis.checks(sweep, output))
    return 0


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
    """Mean, sample std (ddof=1; NaN for a group of one seed: there is none, and summary.json says null) and
    count (``n_seeds``) of ``columns`` per group."""
    grouped = frame.groupby(by, sort=True)
    out = grouped[columns].mean().add_suffix("_mean")
    std = grouped[columns].std(ddof=1).add_suffix("_std")
    out = out.join(std)
    out["n_seeds"] = grouped.size()
    return out.reset_index()


def mean_std(mean: float, std: float) -> str:
    """A table cell ``mean ± std`` (3 decimals); the mean alone where there is no std (one seed: NaN)."""
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"
