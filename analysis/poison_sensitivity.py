"""Analyse a poison_sensitivity sweep from MLflow: ``python -m analysis.poison_sensitivity --help``.

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

from analysis.common import Analysis, AnalysisOutput, Check, completeness_checks, group_stats
from record.read import SweepRecord

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

SHARP_K = 5.0
ACCURACY_COLUMNS = ["test_acc", "train_acc", "train_clean_acc", "gen_gap"]


def aggregate(runs: pd.DataFrame, size: str = "hidden_width") -> pd.DataFrame:
    """Mean and std over seeds per (size, poison_fraction)."""
    return group_stats(runs, [size, "poison_fraction"], ACCURACY_COLUMNS)


def fit_size(points: pd.DataFrame, chance: float) -> dict:
    """Sigmoid fit, threshold and gen gap of one model size's aggregate points (sorted by fraction)."""
    from core.metrics import first_crossing, fit_descending_sigmoid

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


def findings(fits: dict[int, dict], label: str = "width") -> list[str]:
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
    small, large = fits[widths[0]]["gen_gap_at_max"], fits[widths[-1]]["gen_gap_at_max"]
    if len(widths) >= 2 and small > 0:
        out.append(f"generalization gap at the largest poison fraction amplifies {large / small:.1f}x from {label} "
                   f"{widths[0]} ({small:.3f}) to {label} {widths[-1]} ({large:.3f})")
    return out


def _plots(agg: pd.DataFrame, fits: dict[int, dict], size: str, label: str) -> dict[str, plt.Figure]:
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
    ax.set(xlabel="poison fraction", ylabel="clean test accuracy",
           title="Test accuracy vs poison fraction (mean ± std over seeds; dashed: critical threshold)")
    ax.legend()
    gap, ax = plt.subplots(figsize=(7, 4.5))
    for w in widths:
        pts = agg[agg[size] == w].sort_values("poison_fraction")
        ax.errorbar(pts.poison_fraction, pts.gen_gap_mean, yerr=pts.gen_gap_std, marker="o", color=colors[w],
                    capsize=3, label=f"{label} {w}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="poison fraction", ylabel="train acc − test acc", title="Generalization gap vs poison fraction")
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
        table = pd.DataFrame([
            {label: w, "clean acc": f"{f['clean_acc']:.3f}", "L": f"{f['L']:.3f}", "k": f"{f['k']:.2f}",
             "x0": f"{f['x0']:.3f}", "b": f"{f['b']:.3f}",
             "threshold": f"{f['threshold']:.1%}" if f["threshold"] is not None else "not reached",
             "R^2": f"{f['r2']:.3f}", f"gen gap @{f['max_poison_fraction']:.0%}": f"{f['gen_gap_at_max']:.3f}"}
            for w, f in fits.items()
        ])
        summary = {
            "chance": 1.0 / n_classes,
            f"{label}s": {str(w): {k: v for k, v in f.items() if not k.startswith("_")} for w, f in fits.items()},
            "aggregate": agg.to_dict(orient="records"),
        }
        letter = label[0]
        metrics = {f"{name}_{letter}{w}": f[key] for w, f in fits.items()
                   for name, key in (("threshold", "threshold"), ("k", "k"), ("r2", "r2"),
                                     ("gen_gap_at_max", "gen_gap_at_max"))}
        return AnalysisOutput(summary=summary, table=table, findings=findings(fits, label),
                              figures=_plots(agg, fits, size, label), metrics=metrics)

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

if __name__ == "__main__":
    from analysis.common import exit_process, run_analysis

    exit_process(run_analysis(ANALYSIS, "poison_sensitivity"))
