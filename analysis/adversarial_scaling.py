"""Analyse an adversarial_scaling sweep from MLflow: ``python -m analysis adversarial_scaling --help``.

Per dataset and width: mean and std over seeds of clean accuracy and of the
FGSM / PGD gaps averaged over epsilons; per dataset and attack: Pearson r
between log10(param_count) and the mean gap, with its two-sided p-value and
Fisher 95% confidence interval, Spearman's rho with its p-value, and
seed-bootstrap 95% intervals of both (:mod:`core.stats`).

SciPy and matplotlib are imported where they are used: a launcher imports
this module (through the study's declaration) before Ray starts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.common import Analysis, AnalysisOutput, Check, completeness_checks, group_stats, mean_std
from analysis.trend import seed_table, trend_entry, what_survives
from record.read import SweepRecord
from record.schema import curve_key

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
ATTACKS = ("fgsm", "pgd")
PER_EPSILON = ("fgsm_acc", "pgd_acc", "fgsm_gap", "pgd_gap")
TOLERANCE = 0.01  # "within noise": one test sample in 400 is 0.0025


def per_epsilon(sweep: SweepRecord) -> pd.DataFrame:
    """One row per (run, epsilon): the attack accuracies and gaps, read from the runs' histories."""
    rows = []
    for run in sweep.runs.itertuples(index=False):
        series = {key: sweep.history(run.run_id, key) for key in PER_EPSILON}
        epsilons = run.epsilons if isinstance(run.epsilons, tuple) else (run.epsilons,)  # an old one-epsilon sweep
        for index, epsilon in enumerate(epsilons):
            rows.append({"run_id": run.run_id, "dataset": run.dataset, "hidden_width": run.hidden_width,
                         "seed": run.seed, "param_count": run.param_count, "clean_acc": run.clean_acc,
                         "epsilon": epsilon, **{key: series[key][index] for key in PER_EPSILON}})
    return pd.DataFrame(rows)


def seed_bootstrap(runs: pd.DataFrame, dataset: str, attack: str) -> dict | None:
    """Seed-bootstrap 95% intervals of Pearson r and Spearman rho between log10(param_count) and the seed-mean
    gap (:mod:`core.stats`: whole seeds resampled, a seed's data set serving every width); None below 2 seeds
    or 3 widths, or unless every width has the same seeds."""
    from core.stats import resampled_means, trend_intervals, whole_seed_draws

    rows = runs[runs.dataset == dataset]
    table = seed_table(rows, "hidden_width", f"mean_{attack}_gap")
    if table is None or table.shape[0] < 3:
        return None
    params = rows.groupby("hidden_width").param_count.first().reindex(table.index).to_numpy(dtype=float)
    values = table.to_numpy(dtype=float)
    means = resampled_means(values, whole_seed_draws(values.shape[1], values.shape[0]))  # (resamples, widths)
    r, rho = trend_intervals(np.log10(params), means)
    return {"r": r, "rho": rho, "n_seeds": values.shape[1]}


def correlations(by_width: pd.DataFrame, runs: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """Per dataset and attack: r(log10 param_count, seed-mean gap) with p and Fisher 95% CI, Spearman's rho with
    its p, and seed-bootstrap 95% intervals of both (None where not available): :func:`analysis.trend.trend_entry`."""
    out: dict[str, dict[str, dict]] = {}
    for dataset, rows in by_width.groupby("dataset"):
        out[dataset] = {}
        for attack in ATTACKS:
            boot = seed_bootstrap(runs, dataset, attack) if len(rows) >= 3 else None
            out[dataset][attack] = trend_entry(np.log10(rows["param_count"]), rows[f"mean_{attack}_gap_mean"],
                                               boot and (boot["r"], boot["rho"]), int(rows.n_seeds.min()))
    return out


def findings(by_width: pd.DataFrame, corr: dict) -> list[str]:
    """Per dataset and attack, in words: do gaps rise or fall with size, and how sure is that."""
    out = []
    for dataset, attacks in corr.items():
        clean = by_width[by_width.dataset == dataset]["clean_acc_mean"]
        out.append(f"{dataset}: clean accuracy {clean.min():.3f}-{clean.max():.3f} across widths")
        for attack, c in attacks.items():
            if c["r"] is None or math.isnan(c["r"]):
                out.append(f"{dataset} / {attack.upper()}: too few widths for a correlation")
                continue
            direction = "rises" if c["r"] > 0 else "falls"
            certain = "significant at 5%" if c["p_value"] < 0.05 else "not significant at 5%"
            out.append(f"{dataset} / {attack.upper()}: the mean robustness gap {direction} with model size "
                       f"(r = {c['r']:.2f}, p = {c['p_value']:.3f}, 95% CI [{c['ci_low']:.2f}, {c['ci_high']:.2f}], "
                       f"n = {c['n']} widths; {certain})")
            out.append(f"{dataset} / {attack.upper()}: " + what_survives(c, "widths"))
    return out


def _width_axis(ax, widths) -> None:
    """Log-2 x axis labelled with the widths themselves."""
    import matplotlib.ticker

    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(sorted(widths), [str(w) for w in sorted(widths)])


def _per_epsilon_figure(per_eps: pd.DataFrame, datasets: list[str], colors: dict, quantity: str, title: str,
                        ylabel: str) -> plt.Figure:
    """Rows = datasets, columns = attacks; one line per epsilon of ``<attack>_<quantity>`` against width."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.8 * len(datasets)), squeeze=False, sharey=True,
                                layout="constrained")
    for row, dataset in zip(axes, datasets):
        rows = per_eps[per_eps.dataset == dataset]
        for ax, attack in zip(row, ATTACKS):
            if quantity == "acc":
                clean = rows.groupby("hidden_width").clean_acc.mean()
                ax.plot(clean.index, clean.values, "k-o", label="clean")
            for eps, color in colors.items():
                pts = rows[rows.epsilon == eps]
                ax.plot(pts.hidden_width, pts[f"{attack}_{quantity}"], "-o", color=color, label=f"ε={eps:g}")
            ax.set(title=title.format(dataset=dataset, attack=attack.upper()), xlabel="hidden width", ylabel=ylabel)
            _width_axis(ax, rows.hidden_width.unique())
        row[1].legend(fontsize=8)
    return figure


def _plots(evals: pd.DataFrame, by_width: pd.DataFrame, corr: dict) -> dict[str, plt.Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = sorted(evals.dataset.unique())
    epsilons = sorted(evals.epsilon.unique())
    colors = dict(zip(epsilons, plt.cm.plasma(np.linspace(0.05, 0.85, len(epsilons)))))
    per_eps = evals.groupby(["dataset", "hidden_width", "epsilon"])[list(PER_EPSILON) + ["clean_acc"]].mean().reset_index()

    acc = _per_epsilon_figure(per_eps, datasets, colors, "acc", "{dataset}: clean vs {attack} accuracy", "accuracy")
    gap = _per_epsilon_figure(per_eps, datasets, colors, "gap", "{dataset}: {attack} gap (clean − robust)",
                              "robustness gap")
    scaling, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False,
                                  layout="constrained")
    for ax, dataset in zip(axes[0], datasets):
        rows = by_width[by_width.dataset == dataset].sort_values("param_count")
        for attack, marker in zip(ATTACKS, ("o", "s")):
            ax.errorbar(rows.param_count, rows[f"mean_{attack}_gap_mean"], yerr=rows[f"mean_{attack}_gap_std"],
                        marker=marker, capsize=3, label=f"{attack.upper()} (mean over ε)")
        ax.set(xscale="log", xlabel="parameter count", ylabel="mean robustness gap (mean ± std over seeds)",
               title=dataset)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(loc="lower right", fontsize=8)
        notes = []
        for attack in ATTACKS:
            c = corr.get(dataset, {}).get(attack, {})
            if c.get("r") is None or math.isnan(c["r"]):
                continue
            boot = f", seeds [{c['r_boot'][0]:.2f}, {c['r_boot'][1]:.2f}]" if c.get("r_boot") else ", seeds n/a"
            rho = f"; rho = {c['rho']:.2f}" if c.get("rho") is not None else ""
            notes.append(f"{attack.upper()}: r = {c['r']:.2f}, 95% CI Fisher [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
                         f"{boot}{rho}")
        ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    return {"clean_vs_robust.png": acc, "robustness_gap.png": gap, "param_scaling.png": scaling}


def analyze(sweep: SweepRecord) -> AnalysisOutput:
    """Aggregate per width, correlate with size, tabulate and plot one sweep."""
    runs = sweep.runs
    by_width = group_stats(runs, ["dataset", "hidden_width", "param_count"], ["clean_acc", "mean_fgsm_gap", "mean_pgd_gap"])
    corr = correlations(by_width, runs)
    evals = per_epsilon(sweep)
    table = pd.DataFrame([
        {"dataset": r.dataset, "width": r.hidden_width, "params": f"{r.param_count:,}",
         "clean acc": mean_std(r.clean_acc_mean, r.clean_acc_std),
         "mean FGSM gap": mean_std(r.mean_fgsm_gap_mean, r.mean_fgsm_gap_std),
         "mean PGD gap": mean_std(r.mean_pgd_gap_mean, r.mean_pgd_gap_std), "seeds": r.n_seeds}
        for r in by_width.itertuples(index=False)
    ])
    summary = {
        "datasets": {
            dataset: {
                "widths": rows.drop(columns="dataset").to_dict(orient="records"),
                "correlations": corr[dataset],
            }
            for dataset, rows in by_width.groupby("dataset")
        },
        "n_evaluations": len(evals),
        "per_epsilon": evals.groupby(["dataset", "hidden_width", "epsilon"])[list(PER_EPSILON)].mean().reset_index()
        .to_dict(orient="records"),
    }
    metrics = {f"{name}_{dataset}_{attack}": values[key] for dataset, attacks in corr.items()
               for attack, values in attacks.items()
               for name, key in (("r", "r"), ("p", "p_value"), ("r_ci_low", "ci_low"), ("r_ci_high", "ci_high"),
                                 ("rho", "rho"), ("rho_p", "rho_p_value"))}
    for dataset, attacks in corr.items():
        for attack, values in attacks.items():
            for name in ("r_boot", "rho_boot"):
                if values[name] is not None:
                    metrics[f"{name}_low_{dataset}_{attack}"], metrics[f"{name}_high_{dataset}_{attack}"] = values[name]
    # per data set, the width means as curves over the width (step = hidden_width): clean_acc_moons_by_hidden_width
    histories: dict[str, dict[int, float]] = {}
    for r in by_width.itertuples(index=False):
        for name in ("clean_acc", "mean_fgsm_gap", "mean_pgd_gap"):
            curve = histories.setdefault(curve_key(f"{name}_{r.dataset}", "hidden_width"), {})
            curve[int(r.hidden_width)] = getattr(r, f"{name}_mean")
    return AnalysisOutput(summary=summary, table=table, findings=findings(by_width, corr),
                          figures=_plots(evals, by_width, corr), tables={"evaluations": evals}, metrics=metrics,
                          histories=histories)


def checks(sweep: SweepRecord, output: AnalysisOutput) -> list[Check]:
    """Completeness and sanity of a finished sweep."""
    evals = output.tables["evaluations"]
    epsilons = sweep.fixed.get("epsilons", ())
    n_eps = len(epsilons) if isinstance(epsilons, tuple) else 1
    out = completeness_checks(sweep)
    out.append(Check("evaluations", len(evals) == sweep.expected_points * n_eps,
                     f"{len(evals)}/{sweep.expected_points * n_eps} (width, epsilon, seed, dataset) evaluations"))
    accs = evals[["clean_acc", "fgsm_acc", "pgd_acc"]].to_numpy()
    out.append(Check("accuracies in [0, 1]", bool(((accs >= 0) & (accs <= 1)).all())))
    consistent = all(np.allclose(evals.clean_acc - evals[f"{a}_acc"], evals[f"{a}_gap"], atol=1e-9) for a in ATTACKS)
    out.append(Check("gap = clean - robust", consistent))
    weaker = evals[evals.pgd_acc > evals.fgsm_acc + TOLERANCE]
    out.append(Check("PGD at least as strong as FGSM (within 0.01)", weaker.empty,
                     f"{len(weaker)} evaluations where PGD accuracy exceeds FGSM's by more than {TOLERANCE}"))
    rising = 0
    for _, rows in evals.sort_values("epsilon").groupby("run_id"):
        for attack in ATTACKS:
            rising += int((np.diff(rows[f"{attack}_acc"].to_numpy()) > TOLERANCE).sum())
    out.append(Check("robust accuracy non-increasing in epsilon (within 0.01)", rising == 0,
                     f"{rising} increases larger than {TOLERANCE}"))
    low = sweep.runs[sweep.runs.clean_acc < 0.8]
    out.append(Check("clean accuracy >= 0.8 everywhere", low.empty,
                     ", ".join(low.point.head(5)) or f"min {sweep.runs.clean_acc.min():.3f}"))
    return out


ANALYSIS = Analysis(analyze=analyze, checks=checks, table_name="robustness_by_width")

if __name__ == "__main__":  # the alias of `python -m analysis adversarial_scaling FLAGS`
    from analysis.cli import main
    from analysis.common import exit_process

    exit_process(main(study="adversarial_scaling", prog="python -m analysis.adversarial_scaling"))
