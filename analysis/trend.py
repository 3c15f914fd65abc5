"""A generic analysis any study declares in one line: a metric against one swept dimension, grouped by another.

    analysis=trend_analysis("test_acc", x="poison_fraction", by="hidden_width")

Per group (each value of ``by``; one group without it) and each value of ``x``: the metric's mean, std and seeds,
with a seed-bootstrap 95% interval of the mean; per group, the trend of the seed means against ``x``: Pearson r
with its two-sided p and Fisher 95% interval, Spearman's rho with its p, the least-squares slope, and
seed-bootstrap 95% intervals of r and rho.  The bootstrap (:mod:`core.stats`) resamples whole seeds
(``N_RESAMPLES`` draws from ``BOOTSTRAP_SEED``): a seed's values at every ``x`` and in every group stay together,
so the trend and the comparison of groups are paired by seed.  It needs every cell to hold the same >= 2 seeds;
a search sweep (``x`` sampled, one point per value) gets the trend over its points and no intervals.

Outputs: the table ``<metric>_vs_<x>`` (one row per cell), ``<metric>_vs_<x>.png`` (the metric against ``x``,
one line per group, bands: the 95% intervals), the findings in words and as MLflow metrics
(``<metric>_vs_<x>_r_<by><value>``, ``..._rho_...``, ``..._slope_...``, ... see :func:`trend_metrics`) and checks
(every point finished once, every cell present, finite values, intervals available).

The built-in analyses share its parts: :func:`seed_table`, :func:`seed_cube` and :func:`trend_entry`
(adversarial_scaling's correlations, poison_sensitivity's seed matrix).  SciPy and matplotlib are imported where
they are used: a launcher imports this module (through the study's declaration) before Ray starts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.common import Analysis, AnalysisOutput, Check, completeness_checks, group_stats, mean_std
from record.read import SweepRecord
from record.schema import metric_key

ALL = "all"  # the one group of an analysis without ``by``


def seed_table(rows: pd.DataFrame, index: str, column: str, seed: str = "seed") -> pd.DataFrame | None:
    """``column`` as a table ``index`` value x seed (both sorted); None below 2 seeds or unless every ``index``
    value has the same seeds."""
    if seed not in rows.columns:
        return None
    table = rows.pivot_table(index=index, columns=seed, values=column, aggfunc="first")
    if table.shape[1] < 2 or table.isna().any().any():
        return None
    return table


def seed_cube(runs: pd.DataFrame, by: str, x: str, column: str, seed: str = "seed"):
    """``column`` as an array ``(by values, x values, seeds)`` with the sorted ``by`` values, ``x`` values and
    seeds; None unless every (by, x) cell has exactly the same seeds (a sweep with failed points gets no
    intervals)."""
    if seed not in runs.columns:
        return None
    groups, xs, seeds = (sorted(runs[c].unique()) for c in (by, x, seed))
    table = runs.pivot_table(index=[by, x], columns=seed, values=column, aggfunc="first")
    if len(table) != len(groups) * len(xs) or table.isna().any().any():
        return None
    values = table.reindex(pd.MultiIndex.from_product([groups, xs]))[seeds].to_numpy(dtype=float)
    return groups, np.asarray(xs, dtype=float), seeds, values.reshape(len(groups), len(xs), len(seeds))


def trend_entry(x, y, boot: tuple | None = None, n_seeds: int = 1) -> dict[str, Any]:
    """The trend of ``y`` against ``x``: Pearson r with p and Fisher 95% CI (``ci_low``/``ci_high``), Spearman's rho
    with p, and ``boot``'s seed-bootstrap intervals of r and rho (:func:`core.stats.trend_intervals`) as
    ``r_boot``/``rho_boot`` pairs; None where not available (below 3 values; rho of constant values)."""
    from scipy.stats import spearmanr

    from core.fits import pearson_with_ci

    entry = {"r": None, "p_value": None, "ci_low": None, "ci_high": None, "n": len(x), "rho": None,
             "rho_p_value": None, "r_boot": None, "rho_boot": None, "n_seeds": n_seeds}
    if len(x) < 3:
        return entry
    c = pearson_with_ci(x, y)
    entry.update(r=c.r, p_value=c.p_value, ci_low=c.ci_low, ci_high=c.ci_high, n=c.n)
    if np.ptp(y) > 0:
        rank = spearmanr(x, y)
        entry.update(rho=float(rank.statistic), rho_p_value=float(rank.pvalue))
    if boot is not None:
        r, rho = boot
        entry.update(r_boot=r and [r.low, r.high], rho_boot=rho and [rho.low, rho.high])
    return entry


def what_survives(c: dict, across: str) -> str:
    """Which of a trend's readings hold at 95%: across the ``across`` values (Fisher), by rank, over seeds
    (bootstrap)."""
    sign = "positive" if c["r"] > 0 else "negative"
    parts = []
    parts.append(f"Spearman rho = {c['rho']:.2f} (p = {c['rho_p_value']:.3f})" if c["rho"] is not None
                 else f"Spearman rho undefined (constant {c.get('what', 'gaps')})")
    if c["r_boot"] is None:
        parts.append(f"seed-bootstrap intervals not available (needs >= 2 seeds of every {c.get('unit', 'width')}; "
                     "--seeds N)")
        holds_seeds = None
    else:
        low, high = c["r_boot"]
        holds_seeds = low > 0 or high < 0
        parts.append(f"seed-bootstrap 95% CI of r [{low:.2f}, {high:.2f}]"
                     + (f", of rho [{c['rho_boot'][0]:.2f}, {c['rho_boot'][1]:.2f}]" if c["rho_boot"] else ""))
    survives = [name for name, held in ((f"across {across} (Fisher CI excludes 0)", c["ci_low"] > 0 or c["ci_high"] < 0),
                                        ("by rank (Spearman p < 0.05)", c["rho_p_value"] is not None
                                         and c["rho_p_value"] < 0.05),
                                        ("over seeds (bootstrap CI excludes 0)", holds_seeds)) if held]
    verdict = (f"the {sign} trend survives at 95% " + ", ".join(survives)) if survives else \
        f"the {sign} trend survives none of the 95% tests"
    return "; ".join(parts) + f" -> {verdict}"


def trend_metrics(prefix: str, trends: dict[Any, dict], by: str | None) -> dict[str, float]:
    """The trends as MLflow metrics: ``<prefix>_<name>[_<by><group>]`` for r, p (Pearson's), r_ci_low/high
    (Fisher), rho, rho_p, slope, r_boot_low/high and rho_boot_low/high (those available)."""
    metrics = {}
    for group, c in trends.items():
        suffix = f"_{by}{group}" if by is not None else ""
        for name, key in (("r", "r"), ("p", "p_value"), ("r_ci_low", "ci_low"), ("r_ci_high", "ci_high"),
                          ("rho", "rho"), ("rho_p", "rho_p_value"), ("slope", "slope")):
            if c.get(key) is not None:
                metrics[metric_key(f"{prefix}_{name}{suffix}")] = c[key]
        for name in ("r_boot", "rho_boot"):
            if c.get(name) is not None:
                low, high = c[name]
                metrics[metric_key(f"{prefix}_{name}_low{suffix}")] = low
                metrics[metric_key(f"{prefix}_{name}_high{suffix}")] = high
    return metrics


def _numeric(values: pd.Series) -> pd.Series | None:
    converted = pd.to_numeric(values, errors="coerce")
    return None if converted.isna().any() else converted.astype(float)


def trend_analysis(metric: str, x: str, by: str | None = None, *, seed: str = "seed", log_x: bool = False,
                   min_seeds: int = 2) -> Analysis:
    """The generic analysis of ``metric`` against the swept (or searched) config field ``x``, one group per value
    of ``by`` (None: one group), over the seeds in column ``seed``; ``log_x``: the trend and the plot against
    log10(x).  ``min_seeds``: the seeds every cell needs for the "intervals available" check."""
    prefix = f"{metric}_vs_{x}"

    def analyze(sweep: SweepRecord) -> AnalysisOutput:
        runs = sweep.runs.copy()
        group_col = by if by is not None else "_group"
        if by is None:
            runs[group_col] = ALL
        cells = group_stats(runs, [group_col, x], [metric])
        cube = seed_cube(runs, group_col, x, metric, seed)
        boot_means = None
        if cube is not None and len(cube[2]) >= 2:
            from core.stats import percentile_interval, resampled_means, whole_seed_draws

            groups, _, seeds, values = cube
            boot_means = resampled_means(values, whole_seed_draws(len(seeds), len(cube[1])))  # (R, groups, xs)
            intervals = {(g, xv): percentile_interval(boot_means[:, i, j]) for i, g in enumerate(groups)
                         for j, xv in enumerate(sorted(runs[x].unique()))}
        else:
            intervals = {}
        numeric_x = _numeric(cells[x])
        if numeric_x is not None and log_x and not (numeric_x > 0).all():
            numeric_x = None  # no log10 of x <= 0: the table only, and a finding saying why
        trends: dict[Any, dict] = {}
        for i, (group, rows) in enumerate(cells.groupby(group_col, sort=True)):
            if numeric_x is None:
                continue
            xs = numeric_x[rows.index].to_numpy()
            xs = np.log10(xs) if log_x else xs
            ys = rows[f"{metric}_mean"].to_numpy(dtype=float)
            boot = None
            if boot_means is not None:
                from core.stats import trend_intervals

                boot = trend_intervals(xs, boot_means[:, i, :])
            entry = trend_entry(xs, ys, boot, int(rows.n_seeds.min()))
            entry["slope"] = float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 and np.ptp(xs) > 0 else None
            entry.update(what=f"{metric} means", unit=f"{x} value")
            trends[group] = entry
        table = pd.DataFrame([
            {**({by: row[group_col]} if by is not None else {}), x: row[x],
             metric: mean_std(row[f"{metric}_mean"], row[f"{metric}_std"]),
             "95% CI (seed bootstrap)": _shown(intervals.get((row[group_col], row[x]))), "seeds": row["n_seeds"]}
            for _, row in cells.iterrows()
        ])
        findings = _findings(metric, x, by, trends, log_x, numeric_x is None, bool(intervals))
        if log_x and _numeric(cells[x]) is not None and numeric_x is None:
            findings = [f"log_x: {x} has values <= 0, so no trend against log10({x}) (the table gives {metric} per {x})"]
        summary = {"metric": metric, "x": x, "by": by, "log_x": log_x,
                   "cells": [{**{k: v for k, v in row.items() if k != "_group"},
                              "ci": _pair(intervals.get((row[group_col], row[x])))}
                             for row in cells.to_dict(orient="records")],
                   "trends": {str(g): {k: v for k, v in c.items() if k not in ("what", "unit")}
                              for g, c in trends.items()},
                   "intervals": {"method": "seed bootstrap (whole seeds), percentile", "confidence": 0.95,
                                 "available": bool(intervals)}}
        return AnalysisOutput(summary=summary, table=table, findings=findings,
                              figures={f"{prefix}.png": _plot(cells, group_col, by, x, metric, intervals, log_x)},
                              tables={"cells": cells}, metrics=trend_metrics(prefix, trends, by))

    def checks(sweep: SweepRecord, output: AnalysisOutput) -> list[Check]:
        cells = output.tables["cells"]
        out = completeness_checks(sweep)
        if x in sweep.grid and (by is None or by in sweep.grid):
            expected = len(sweep.grid[x]) * (len(sweep.grid[by]) if by is not None else 1)
            out.append(Check(f"every ({by + ', ' if by else ''}{x}) cell present", len(cells) == expected,
                             f"{len(cells)}/{expected}"))
            enough = int((cells.n_seeds >= min_seeds).sum())
            out.append(Check(f"intervals available (>= {min_seeds} seeds in every cell)",
                             enough == len(cells) and output.summary["intervals"]["available"],
                             f"{enough}/{len(cells)} cells"))
        values = pd.to_numeric(sweep.runs[metric], errors="coerce")
        out.append(Check(f"{metric} finite in every run", bool(np.isfinite(values).all()),
                         f"{int(np.isfinite(values).sum())}/{len(values)}"))
        return out

    return Analysis(analyze=analyze, checks=checks, table_name=prefix)


def _pair(interval) -> list[float] | None:
    return None if interval is None else [interval.low, interval.high]


def _shown(interval) -> str:
    return "n/a" if interval is None else f"[{interval.low:.3g}, {interval.high:.3g}]"


def _findings(metric: str, x: str, by: str | None, trends: dict, log_x: bool, categorical: bool,
              with_intervals: bool) -> list[str]:
    against = f"log10({x})" if log_x else x
    if categorical:
        return [f"{x} is not numeric: no trend test (the table gives {metric} per {x})"]
    out = []
    for group, c in trends.items():
        name = f"{by} {group}" if by is not None else metric
        if c["r"] is None or math.isnan(c["r"]):
            out.append(f"{name}: too few distinct {x} values (or constant values) for a trend test")
            continue
        direction = "rises" if c["r"] > 0 else "falls"
        slope = f", slope {c['slope']:+.3g} per unit of {against}" if c.get("slope") is not None else ""
        out.append(f"{name}: {metric} {direction} with {against} (r = {c['r']:.2f}, p = {c['p_value']:.3f}, 95% CI "
                   f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}], n = {c['n']} {x} values{slope})")
        out.append(f"{name}: " + what_survives(c, f"{x} values"))
    if not with_intervals:
        out.append(f"95% seed-bootstrap intervals not available: they need the same >= 2 seeds in every cell "
                   "(--seeds N; a search sweep has one point per value)")
    return out


def _plot(cells: pd.DataFrame, group_col: str, by: str | None, x: str, metric: str, intervals: dict, log_x: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5))
    groups = sorted(cells[group_col].unique(), key=str)
    colors = dict(zip(groups, plt.cm.viridis(np.linspace(0.1, 0.85, max(len(groups), 1)))))
    for group in groups:
        rows = cells[cells[group_col] == group].sort_values(x)
        label = f"{by} {group}" if by is not None else metric
        ax.errorbar(rows[x], rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"], marker="o", capsize=3,
                    color=colors[group], label=label)
        bands = [intervals.get((group, v)) for v in rows[x]]
        if all(b is not None for b in bands) and len(bands):
            ax.fill_between(rows[x], [b.low for b in bands], [b.high for b in bands], color=colors[group], alpha=0.15,
                            lw=0)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=x, ylabel=metric, title=f"{metric} against {x} (mean ± std over seeds; band: 95% seed-bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure
