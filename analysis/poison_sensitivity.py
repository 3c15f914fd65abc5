"""Analyse a poison_sensitivity sweep from MLflow: ``python -m analysis poison_sensitivity --help``.

Per model size (``hidden_width`` here; :func:`make_analysis` takes another
column, e.g. the number of hidden layers): seed-mean test accuracy against
poison fraction, a descending sigmoid fit (L, k, x0, b, R^2), the critical
threshold where the fit reaches ``(clean_acc + chance) / 2``, and the
generalization gap at the largest fraction.

SciPy and matplotlib are imported where they are used: a launcher imports
this module (through the study's declaration) before Ray starts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.common import Analysis, AnalysisOutput, Check, completeness_checks, group_stats, map_blocks
from analysis.trend import seed_cube
from record.read import SweepRecord
from record.schema import curve_key

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

SHARP_K = 5.0
ACCURACY_COLUMNS = ["test_acc", "train_acc", "train_clean_acc", "gen_gap"]


def aggregate(runs: pd.DataFrame, size: str = "hidden_width") -> pd.DataFrame:
    """Mean and std over seeds per (size, poison_fraction)."""
    return group_stats(runs, [size, "poison_fraction"], ACCURACY_COLUMNS)


def fit_size(points: pd.DataFrame, chance: float) -> dict:
    """Sigmoid fit, threshold and gen gap of one model size's aggregate points (sorted by fraction)."""
    from core.fits import first_crossing, fit_descending_sigmoid

    points = points.sort_values("poison_fraction")
    x = points["poison_fraction"].to_numpy()
    y = points["test_acc_mean"].to_numpy()
    clean = float(y[0]) if x[0] == 0.0 else math.nan
    entry = {"clean_acc": clean, "L": math.nan, "k": math.nan, "x0": math.nan, "b": math.nan, "r2": math.nan,
             "threshold": None, "threshold_reached": False, "gen_gap_at_max": float(points["gen_gap_mean"].iloc[-1]),
             "max_poison_fraction": float(x[-1]), "fit_error": None}
    try:
        fit = fit_descending_sigmoid(x, y)
    except (RuntimeError, ValueError) as error:
        entry["fit_error"] = str(error)
        return entry
    entry.update(L=fit.L, k=fit.k, x0=fit.x0, b=fit.b, r2=fit.r2)
    if not math.isnan(clean):
        target = (clean + chance) / 2.0
        threshold = first_crossing(fit, target, x_max=max(0.6, float(x[-1]) + 0.1))
        entry.update(threshold=threshold, threshold_reached=threshold is not None, threshold_target=target)
    entry["_fit"] = fit
    return entry


def seed_matrix(runs: pd.DataFrame, size: str, column: str):
    """``column`` as an array ``(sizes, fractions, seeds)`` with the sorted sizes, fractions and seeds; None unless
    every (size, fraction) has exactly the same seeds (:func:`analysis.trend.seed_cube`)."""
    return seed_cube(runs, size, "poison_fraction", column)


def bootstrap(runs: pd.DataFrame, size: str, chance: float, fits: dict[int, dict]) -> dict | None:
    """Seed-bootstrap intervals (:mod:`core.stats`: seeds resampled within each poison fraction, the same draws
    for every size, the sigmoid refitted each time) of each size's threshold, k and gen gap at the largest
    fraction, and of every pairwise threshold difference (larger size minus smaller); None below 2 seeds or
    with an incomplete seed matrix.  A resample whose fit never reaches the midpoint has threshold +inf."""
    from core.stats import percentile_interval, resampled_means, seed_draws

    acc, gap = seed_matrix(runs, size, "test_acc"), seed_matrix(runs, size, "gen_gap")
    if acc is None or gap is None or len(acc[2]) < 2:
        return None
    sizes, x, seeds, values = acc
    draws = seed_draws(len(seeds), len(x))
    means = resampled_means(values, draws)  # (resamples, sizes, fractions)
    gaps = resampled_means(gap[3], draws)[:, :, -1]
    starts = [fits[int(w)].get("_fit") for w in sizes]
    refits = map_blocks(_refit, means, x, starts, chance)  # 1,000 x sizes curve fits: the analysis's main cost
    ks, thresholds = (np.concatenate([part[n] for part in refits]) for n in (0, 1))
    out = {"n_seeds": len(seeds), "n_resamples": int(means.shape[0]), "sizes": {}, "differences": {}}
    for i, w in enumerate(sizes):
        out["sizes"][int(w)] = {"threshold": percentile_interval(thresholds[:, i]), "k": percentile_interval(ks[:, i]),
                                "gen_gap_at_max": percentile_interval(gaps[:, i])}
    for i, small in enumerate(sizes):
        for j in range(i + 1, len(sizes)):
            with np.errstate(invalid="ignore"):
                diff = thresholds[:, j] - thresholds[:, i]
            out["differences"][(int(small), int(sizes[j]))] = percentile_interval(diff)
    return out


def _refit(means: np.ndarray, x: np.ndarray, starts: list, chance: float) -> tuple[np.ndarray, np.ndarray]:
    """k and threshold of the sigmoid refitted to each resample's means ``(resamples, sizes, fractions)``, each
    size's fit starting from ``starts`` (NaN where a fit fails; +inf where it never reaches the midpoint)."""
    from core.fits import first_crossing, fit_descending_sigmoid

    thresholds = np.full(means.shape[:2], np.nan)
    ks = np.full(means.shape[:2], np.nan)
    for b in range(means.shape[0]):
        for i, start in enumerate(starts):
            try:
                fit = fit_descending_sigmoid(x, means[b, i], start=start)
            except (RuntimeError, ValueError):
                continue
            ks[b, i] = fit.k
            if x[0] == 0.0:
                found = first_crossing(fit, (means[b, i, 0] + chance) / 2.0, x_max=max(0.6, float(x[-1]) + 0.1))
                thresholds[b, i] = np.inf if found is None else found
    return ks, thresholds


def interval_findings(fits: dict[int, dict], boot: dict | None, label: str) -> list[str]:
    """How sure the threshold findings are: each pairwise difference with its seed-bootstrap interval."""
    if boot is None:
        return [f"95% intervals not available: they need at least 2 seeds of every {label} at every poison fraction "
                "(--seeds N)"]
    out = []
    held = []
    for (small, large), interval in boot["differences"].items():
        a, b = fits[small]["threshold"], fits[large]["threshold"]
        if interval is None or a is None or b is None:
            out.append(f"threshold difference {label} {small} -> {large}: not available (no threshold)")
            continue
        holds = interval.high < 0
        held.append(holds)
        out.append(f"threshold {label} {large} minus {label} {small}: {100 * (b - a):+.1f} points, 95% CI "
                   f"[{100 * interval.low:+.1f}, {100 * interval.high:+.1f}] "
                   f"({'below zero: the fall holds at 95%' if holds else 'includes zero: not shown at 95%'})")
    if held:
        verdict = "holds at 95% for every pair" if all(held) else f"holds at 95% for {sum(held)} of {len(held)} pairs"
        out.append(f"\"thresholds fall with {label}\" {verdict} ({boot['n_seeds']} seeds, {boot['n_resamples']} "
                   "seed-bootstrap resamples)")
    return out


def _intervals_summary(boot: dict | None, label: str) -> dict:
    """The bootstrap's intervals as JSON (None: not available)."""
    if boot is None:
        return {"available": False}
    pair = lambda i: None if i is None else [i.low, i.high]  # noqa: E731
    return {"available": True, "method": "seed bootstrap, percentile", "confidence": 0.95,
            "n_seeds": boot["n_seeds"], "n_resamples": boot["n_resamples"],
            f"{label}s": {str(w): {k: pair(v) for k, v in by_key.items()} for w, by_key in boot["sizes"].items()},
            "threshold_differences": {f"{a}->{b}": pair(v) for (a, b), v in boot["differences"].items()}}


def findings(fits: dict[int, dict], label: str = "width", boot: dict | None = None) -> list[str]:
    """The study's conclusions, in words (``label`` names the model size: width, depth, ...)."""
    widths = sorted(fits)
    out = []
    for w in widths:
        k = fits[w]["k"]
        if not math.isnan(k):
            out.append(f"{label} {w}: {'sharp' if k > SHARP_K else 'gradual'} transition (k = {k:.2f}, "
                       f"{'>' if k > SHARP_K else '<='} {SHARP_K:g})")
    thresholds = [fits[w]["threshold"] for w in widths]
    if len(widths) >= 2 and all(t is not None for t in thresholds):
        shown = ", ".join(f"{w}: {t:.1%}" for w, t in zip(widths, thresholds))
        falling = all(a >= b for a, b in zip(thresholds, thresholds[1:]))
        out.append(f"critical thresholds {'fall' if falling else 'do not fall monotonically'} with {label} ({shown}): "
                   f"larger models are {'more' if falling else 'not consistently more'} sensitive to poisoning")
    for w in widths:
        if fits[w]["fit_error"] is not None:
            out.append(f"{label} {w}: no sigmoid fit ({fits[w]['fit_error']})")
        elif fits[w]["threshold"] is None and not math.isnan(fits[w]["clean_acc"]):
            out.append(f"{label} {w}: the fitted curve never reaches the midpoint between clean accuracy and chance "
                       f"in the searched range (no threshold)")
    out += interval_findings(fits, boot, label)
    small, large = fits[widths[0]]["gen_gap_at_max"], fits[widths[-1]]["gen_gap_at_max"]
    if len(widths) >= 2 and small > 0:
        out.append(f"generalization gap at the largest poison fraction amplifies {large / small:.1f}x from {label} "
                   f"{widths[0]} ({small:.3f}) to {label} {widths[-1]} ({large:.3f})")
    return out


def _plots(agg: pd.DataFrame, fits: dict[int, dict], size: str, label: str, boot: dict | None) -> dict[str, plt.Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted(fits)
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.1, 0.85, len(widths)))))
    acc, ax = plt.subplots(figsize=(7, 4.5))
    for w in widths:
        pts = agg[agg[size] == w].sort_values("poison_fraction")
        ax.errorbar(pts.poison_fraction, pts.test_acc_mean, yerr=pts.test_acc_std, fmt="o", color=colors[w],
                    capsize=3, label=f"{label} {w}")
        fit = fits[w].get("_fit")
        if fit is not None:
            grid = np.linspace(0, max(0.6, pts.poison_fraction.max() + 0.1), 300)
            ax.plot(grid, fit(grid), color=colors[w], lw=1.5)
        if fits[w]["threshold"] is not None:
            ax.axvline(fits[w]["threshold"], color=colors[w], ls="--", lw=1)
        interval = boot["sizes"][w]["threshold"] if boot else None
        if interval is not None and np.isfinite(interval.low):
            ax.axvspan(interval.low, min(interval.high, ax.get_xlim()[1]), color=colors[w], alpha=0.12, lw=0)
    ax.set(xlabel="poison fraction", ylabel="clean test accuracy",
           title="Test accuracy vs poison fraction (mean ± std over seeds)\n"
                 "dashed: critical threshold; band: its 95% seed-bootstrap interval")
    ax.legend()
    gap, ax = plt.subplots(figsize=(7, 4.5))
    for w in widths:
        pts = agg[agg[size] == w].sort_values("poison_fraction")
        ax.errorbar(pts.poison_fraction, pts.gen_gap_mean, yerr=pts.gen_gap_std, marker="o", color=colors[w],
                    capsize=3, label=f"{label} {w}")
        interval = boot["sizes"][w]["gen_gap_at_max"] if boot else None
        if interval is not None:  # the 95% interval of the gap at the largest fraction, beside its point
            ax.vlines(pts.poison_fraction.iloc[-1] + 0.006 * (1 + widths.index(w)), interval.low, interval.high,
                      color=colors[w], lw=5, alpha=0.35)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="poison fraction", ylabel="train acc − test acc",
           title="Generalization gap vs poison fraction (mean ± std; bars: 95% CI at the largest fraction)")
    ax.legend()
    panels, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 4), sharey=True, squeeze=False)
    for ax, w in zip(axes[0], widths):
        pts = agg[agg[size] == w].sort_values("poison_fraction")
        for column, label in (("train_acc", "train (poisoned labels)"), ("train_clean_acc", "train (clean labels)"),
                              ("test_acc", "test (clean)")):
            ax.errorbar(pts.poison_fraction, pts[f"{column}_mean"], yerr=pts[f"{column}_std"], marker="o",
                        capsize=2, label=label)
        ax.set(title=f"{label} {w}", xlabel="poison fraction")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8)
    return {"accuracy_vs_poison.png": acc, "generalization_gap.png": gap, "train_vs_test.png": panels}


def _curves(fits: dict[int, dict], intervals: dict, size: str) -> dict[str, dict[int, float]]:
    """The per-size findings (``threshold``, ``k``, ``r2``, ``gen_gap_at_max`` and their interval ends) as curves
    over the size, step = the size (``threshold_by_hidden_width``): only where every size is an integer."""
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in fits):
        return {}
    curves: dict[str, dict[int, float]] = {}
    for w, fit in fits.items():
        for key in ("threshold", "k", "r2", "gen_gap_at_max"):
            if fit.get(key) is not None:
                curves.setdefault(curve_key(key, size), {})[int(w)] = fit[key]
    for w, by_key in intervals.items():
        for key, interval in by_key.items():
            if interval is not None:
                curves.setdefault(curve_key(f"{key}_ci_low", size), {})[int(w)] = interval.low
                curves.setdefault(curve_key(f"{key}_ci_high", size), {})[int(w)] = interval.high
    return curves


def make_analysis(size: str = "hidden_width", label: str = "width") -> Analysis:
    """The poison-sensitivity analysis with the model size in column ``size``, called ``label`` in the outputs.

    The summary keys sizes under ``<label>s`` (``widths`` for this study).
    """

    def analyze(sweep: SweepRecord) -> AnalysisOutput:
        """Aggregate, fit, find thresholds, tabulate and plot one sweep."""
        runs = sweep.runs
        agg = aggregate(runs, size)
        n_classes = int(runs["n_classes"].iloc[0])
        fits = {int(w): fit_size(agg[agg[size] == w], 1.0 / n_classes) for w in sorted(agg[size].unique())}
        boot = bootstrap(runs, size, 1.0 / n_classes, fits)
        intervals = boot["sizes"] if boot else {}

        def shown(w: int, key: str, percent: bool = False) -> str:
            interval = intervals.get(w, {}).get(key)
            if interval is None:
                return "n/a"
            number = (lambda v: "> range" if v == math.inf else f"{v:.1%}") if percent else (lambda v: f"{v:.3g}")
            return f"[{number(interval.low)}, {number(interval.high)}]"

        table = pd.DataFrame([
            {label: w, "clean acc": f"{f['clean_acc']:.3f}", "L": f"{f['L']:.3f}", "k": f"{f['k']:.2f}",
             "k 95% CI": shown(w, "k"), "x0": f"{f['x0']:.3f}", "b": f"{f['b']:.3f}",
             "threshold": f"{f['threshold']:.1%}" if f["threshold"] is not None else "not reached",
             "threshold 95% CI": shown(w, "threshold", percent=True),
             "R^2": f"{f['r2']:.3f}", f"gen gap @{f['max_poison_fraction']:.0%}": f"{f['gen_gap_at_max']:.3f}",
             "gen gap 95% CI": shown(w, "gen_gap_at_max")}
            for w, f in fits.items()
        ])
        summary = {
            "chance": 1.0 / n_classes,
            f"{label}s": {str(w): {k: v for k, v in f.items() if not k.startswith("_")} for w, f in fits.items()},
            "aggregate": agg.to_dict(orient="records"),
            "intervals": _intervals_summary(boot, label),
        }
        letter = label[0]
        metrics = {f"{name}_{letter}{w}": f[key] for w, f in fits.items()
                   for name, key in (("threshold", "threshold"), ("k", "k"), ("r2", "r2"),
                                     ("gen_gap_at_max", "gen_gap_at_max"))}
        for w, by_key in intervals.items():
            for key, interval in by_key.items():
                if interval is not None:
                    metrics[f"{key}_ci_low_{letter}{w}"], metrics[f"{key}_ci_high_{letter}{w}"] = interval.low, interval.high
        for (small, large), interval in (boot["differences"] if boot else {}).items():
            a, b = fits[small]["threshold"], fits[large]["threshold"]
            pair = f"{letter}{small}_{letter}{large}"
            if a is not None and b is not None:
                metrics[f"threshold_diff_{pair}"] = b - a
            if interval is not None:
                metrics[f"threshold_diff_ci_low_{pair}"], metrics[f"threshold_diff_ci_high_{pair}"] = interval.low, interval.high
        return AnalysisOutput(summary=summary, table=table, findings=findings(fits, label, boot),
                              figures=_plots(agg, fits, size, label, boot), metrics=metrics,
                              histories=_curves(fits, intervals, size))

    def checks(sweep: SweepRecord, output: AnalysisOutput) -> list[Check]:
        """Completeness and sanity of a finished sweep."""
        widths = output.summary[f"{label}s"]
        agg = pd.DataFrame(output.summary["aggregate"])
        n_cells = sweep.runs.groupby([size, "poison_fraction"]).ngroups if len(sweep.runs) else 0
        expected_cells = len(sweep.grid.get(size, ())) * len(sweep.grid.get("poison_fraction", ()))
        out = completeness_checks(sweep)
        out.append(Check("aggregate points", len(agg) == expected_cells == n_cells, f"{len(agg)}/{expected_cells}"))
        fitted = [w for w, f in widths.items() if f["fit_error"] is None]
        out.append(Check("sigmoid fits", len(fitted) == len(widths), f"{len(fitted)}/{len(widths)} {label}s fitted"))
        r2 = {w: f["r2"] for w, f in widths.items()}
        out.append(Check("R^2 > 0.8", all(v is not None and v > 0.8 for v in r2.values()),
                         ", ".join(f"{w}: {v:.3f}" for w, v in r2.items())))
        clean = {w: f["clean_acc"] for w, f in widths.items()}
        out.append(Check("clean accuracy > 0.7", all(v > 0.7 for v in clean.values()),
                         ", ".join(f"{w}: {v:.3f}" for w, v in clean.items())))
        falls = {}
        for w in widths:
            pts = agg[agg[size] == int(w)].sort_values("poison_fraction")
            falls[w] = pts.test_acc_mean.iloc[-1] < pts.test_acc_mean.iloc[0]
        out.append(Check("accuracy falls with poison", all(falls.values()),
                         ", ".join(f"{w}: {'yes' if v else 'no'}" for w, v in falls.items())))
        stds = agg["test_acc_std"]
        out.append(Check("standard deviations reported", bool(stds.notna().all()) and bool((agg["n_seeds"] > 1).all()),
                         f"{int(stds.notna().sum())}/{len(agg)} aggregate points have a std over >1 seed"))
        return out

    return Analysis(analyze=analyze, checks=checks, table_name="sigmoid_fits")


ANALYSIS = make_analysis()

if __name__ == "__main__":  # the alias of `python -m analysis poison_sensitivity FLAGS`
    from analysis.cli import main
    from analysis.common import exit_process

    exit_process(main(study="poison_sensitivity", prog="python -m analysis.poison_sensitivity"))
