"""The robust_loss leaderboard from MLflow: ``python -m analysis robust_loss --help``.

Rows are losses; per benchmark test_acc / poison_fit / robust_score as mean ±
std over seeds; the last column is the mean robust_score across benchmarks.
Plots: test accuracy and poison_fit against epoch, one panel pair per benchmark.
Reads MLflow only: no torch and no vision data code (matplotlib is imported
where it is used: a launcher imports this module before Ray starts).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.common import Analysis, AnalysisOutput, Check, completeness_checks, group_stats, mean_std
from record.read import SweepRecord
from record.schema import metric_key

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
METRICS = ("test_acc", "poison_fit", "robust_score")


BASELINE = "cross_entropy"  # what every other loss is compared with, paired by seed
TEST = "paired t"


def _interval(interval) -> str:
    return "n/a (1 seed)" if interval is None else f"[{interval.low:.3f}, {interval.high:.3f}]"


def score_intervals(runs: pd.DataFrame) -> dict[tuple[str, str], object]:
    """(benchmark, loss) -> the Student-t 95% interval of the mean robust_score over seeds (None for one seed)."""
    from core.stats import t_interval

    return {(b, loss): t_interval(rows.robust_score) for (b, loss), rows in runs.groupby(["benchmark", "loss"])}


def comparisons(runs: pd.DataFrame) -> dict[tuple[str, str], object]:
    """(benchmark, loss) -> robust_score of the loss minus cross-entropy's, paired by seed (seeds both ran):
    :func:`core.stats.paired_t`.  Absent where the benchmark has no cross-entropy run."""
    from core.stats import paired_t

    out = {}
    for benchmark, rows in runs.groupby("benchmark"):
        base = rows[rows.loss == BASELINE].groupby("seed").robust_score.mean()
        if base.empty:
            continue
        for loss, mine in rows[rows.loss != BASELINE].groupby("loss"):
            mine = mine.groupby("seed").robust_score.mean()
            seeds = sorted(set(mine.index) & set(base.index))
            out[(benchmark, loss)] = paired_t(mine[seeds].to_numpy(), base[seeds].to_numpy())
    return out


def leaderboard(stats: pd.DataFrame, intervals: dict | None = None, compared: dict | None = None) -> pd.DataFrame:
    """One row per loss, best mean robust_score first: per benchmark the means ± std over seeds, the 95% interval
    of robust_score, and its difference from cross-entropy paired by seed (paired t, 95% interval)."""
    intervals, compared = intervals or {}, compared or {}
    rows = []
    benchmarks = sorted(stats.benchmark.unique())
    for loss, per_loss in stats.groupby("loss"):
        row: dict[str, object] = {"loss": loss}
        for benchmark in benchmarks:
            cell = per_loss[per_loss.benchmark == benchmark]
            if cell.empty:
                row[benchmark] = "—"
                continue
            c = cell.iloc[0]
            row[benchmark] = " / ".join(mean_std(c[f"{m}_mean"], c[f"{m}_std"]) for m in METRICS)
            row[f"{benchmark} robust_score 95% CI"] = _interval(intervals.get((benchmark, loss)))
            comparison = compared.get((benchmark, loss))
            row[f"{benchmark} vs {BASELINE} ({TEST})"] = (
                "—" if loss == BASELINE or comparison is None else
                f"{comparison.mean_diff:+.3f} {_interval(comparison.interval)}"
                + (" *" if comparison.significant else ""))
        row["mean robust_score"] = per_loss.robust_score_mean.mean()
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("mean robust_score", ascending=False)
    table["mean robust_score"] = table["mean robust_score"].map(lambda v: f"{v:.3f}")
    return table.rename(columns={b: f"{b} (test_acc / poison_fit / robust_score)" for b in benchmarks})


def winner_findings(stats: pd.DataFrame, compared: dict) -> list[str]:
    """Per benchmark: the best mean, and a winner over cross-entropy only where the paired interval excludes 0."""
    out = []
    for benchmark, rows in stats.groupby("benchmark"):
        top = rows.sort_values("robust_score_mean", ascending=False).iloc[0]
        out.append(f"{benchmark}: {top.loss} has the best mean robust_score {top.robust_score_mean:.3f} "
                   f"(test_acc {top.test_acc_mean:.3f}, poison_fit {top.poison_fit_mean:.3f}, {top.n_seeds} seed(s))")
        mine = {loss: c for (b, loss), c in compared.items() if b == benchmark}
        if not mine:
            out.append(f"{benchmark}: no {BASELINE} run to compare with: no winner claimed")
            continue
        better = sorted((c.mean_diff, loss) for loss, c in mine.items() if c.significant and c.mean_diff > 0)
        worse = sorted(loss for loss, c in mine.items() if c.significant and c.mean_diff < 0)
        if all(c.interval is None for c in mine.values()):
            out.append(f"{benchmark}: one seed per loss: no interval, no winner claimed (--seeds N)")
            continue
        n = max(c.n for c in mine.values())
        if better:
            shown = ", ".join(f"{loss} ({diff:+.3f} {_interval(mine[loss].interval)})" for diff, loss in reversed(better))
            out.append(f"{benchmark}: beats {BASELINE} at 95% ({TEST} on robust_score, n = {n} seeds): {shown}")
        else:
            out.append(f"{benchmark}: no loss beats {BASELINE} at 95% ({TEST} on robust_score, n = {n} seeds): "
                       "no winner claimed")
        if worse:
            out.append(f"{benchmark}: worse than {BASELINE} at 95%: {', '.join(worse)}")
    return out


def _curves(sweep: SweepRecord) -> dict[str, plt.Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sweep.runs
    benchmarks = sorted(runs.benchmark.unique())
    losses = sorted(runs.loss.unique())
    colors = dict(zip(losses, plt.cm.tab10(np.arange(len(losses)) % 10)))
    figure, axes = plt.subplots(len(benchmarks), 2, figsize=(11, 3.6 * len(benchmarks)), squeeze=False,
                                layout="constrained")
    for row, benchmark in zip(axes, benchmarks):
        for ax, metric in zip(row, ("test_acc", "poison_fit")):
            for loss in losses:
                series = [sweep.history(r, metric) for r in runs[(runs.benchmark == benchmark) & (runs.loss == loss)].run_id]
                series = [s for s in series if s]
                if not series:
                    continue
                length = min(len(s) for s in series)
                values = np.array([s[:length] for s in series])
                mean = values.mean(axis=0)
                ax.plot(np.arange(length), mean, color=colors[loss], label=loss)
                if len(series) > 1:  # the 95% t interval of the mean over seeds
                    from scipy.stats import t as student

                    half = student.ppf(0.975, len(series) - 1) * values.std(axis=0, ddof=1) / np.sqrt(len(series))
                    ax.fill_between(np.arange(length), np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1),
                                    color=colors[loss], alpha=0.15, lw=0)  # both metrics are shares: [0, 1]
            ax.set(title=f"{benchmark}: {metric} (mean over seeds; band: 95% CI)", xlabel="epoch", ylabel=metric)
        row[0].legend(fontsize=8)
    return {"curves.png": figure}


def search_keys(sweep: SweepRecord) -> list[str]:
    """The keys a search sweep sampled (its parent's ``space.<key>`` params); empty for a grid sweep."""
    return [k[len("space."):] for k in sweep.fixed if k.startswith("space.")]


def _analyze_search(sweep: SweepRecord, keys: list[str]) -> AnalysisOutput:
    """A search sweep: one row per point, best first by the search's metric (a validation metric; else
    robust_score). Its points are different settings, not seeds of one setting: no means, stds or intervals over
    them, no comparison with cross-entropy by seed, and none of the grid leaderboard's metrics."""
    runs = sweep.runs.copy()
    metric = sweep.fixed.get("metric") if sweep.fixed.get("metric") in runs else None
    mode = sweep.fixed.get("mode", "max") if metric else "max"
    rank = metric or ("val_acc" if "val_acc" in runs else "robust_score")
    runs = runs.sort_values(rank, ascending=(mode == "min"), kind="stable")
    shown = [c for c in ("benchmark", "loss", *keys, "seed") if c in runs]
    values = [m for m in dict.fromkeys(([rank] if rank not in METRICS else []) + list(METRICS)) if m in runs]

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else value

    table = pd.DataFrame([{**{c: cell(r[c]) for c in shown}, **{m: f"{r[m]:.3f}" for m in values}}
                          for _, r in runs.iterrows()])
    seeds = sorted(runs["seed"].unique().tolist()) if "seed" in runs else []
    algorithm = sweep.fixed.get("search", "search")
    best = runs.iloc[0]
    named = " ".join(f"{c}={cell(best[c])}" for c in shown)
    findings = [
        f"search sweep ({algorithm}) over {', '.join(keys)}: {len(runs)} point(s), {len(seeds)} distinct seed(s) "
        f"({', '.join(map(str, seeds))}); one row per point, no statistics over seeds (the points are different "
        "settings, not repeats of one)",
        f"best point by {rank}{'' if rank != 'robust_score' else ' (a test metric: launch with --metric val_acc'}"
        f"{'' if rank != 'robust_score' else ' to select on held-out data)'}: {named} ({rank}={best[rank]:.3f}, "
        f"test robust_score={best.robust_score:.3f}); confirm it with a grid over seeds (--seeds N) before "
        "claiming it beats another loss",
    ]
    summary = {
        "search": {"algorithm": algorithm, "keys": keys, "ranked_by": rank, "mode": mode, "n_points": len(runs),
                   "n_distinct_seeds": len(seeds), "seeds": seeds},
        "points": [{**{c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in shown},
                    **{m: float(r[m]) for m in values}, "run_id": r.run_id} for _, r in runs.iterrows()],
    }
    return AnalysisOutput(summary=summary, table=table, findings=findings, tables={"points": runs})


def analyze(sweep: SweepRecord) -> AnalysisOutput:
    """Leaderboard, per-(benchmark, loss) statistics and training curves of one sweep; a search sweep's points
    one row each (:func:`_analyze_search`)."""
    keys = search_keys(sweep)
    if keys:
        return _analyze_search(sweep, keys)
    stats = group_stats(sweep.runs, ["benchmark", "loss"], list(METRICS))
    intervals, compared = score_intervals(sweep.runs), comparisons(sweep.runs)
    table = leaderboard(stats, intervals, compared)
    best = table.iloc[0]
    findings = [f"best mean robust_score over the benchmarks: {best['loss']} ({best['mean robust_score']})"]
    findings += winner_findings(stats, compared)
    summary = {
        "benchmarks": {
            benchmark: {r.loss: {m: {"mean": r[f"{m}_mean"], "std": r[f"{m}_std"]} for m in METRICS} | {"n_seeds": r.n_seeds}
                        for _, r in rows.iterrows()}
            for benchmark, rows in stats.groupby("benchmark")
        },
        "mean_robust_score": stats.groupby("loss").robust_score_mean.mean().to_dict(),
    }
    metrics = {metric_key(f"{m}_{r.benchmark}_{r.loss}"): r[f"{m}_mean"] for _, r in stats.iterrows() for m in METRICS}
    metrics.update({metric_key(f"mean_robust_score_{loss}"): v for loss, v in summary["mean_robust_score"].items()})
    for (benchmark, loss), interval in intervals.items():
        if interval is not None:
            metrics[metric_key(f"robust_score_ci_low_{benchmark}_{loss}")] = interval.low
            metrics[metric_key(f"robust_score_ci_high_{benchmark}_{loss}")] = interval.high
    for (benchmark, loss), c in compared.items():
        summary["benchmarks"][benchmark][loss]["vs_" + BASELINE] = {
            "test": TEST, "mean_diff": c.mean_diff, "n": c.n, "p_value": c.p_value, "significant": c.significant,
            "interval": None if c.interval is None else [c.interval.low, c.interval.high]}
        metrics[metric_key(f"diff_vs_ce_{benchmark}_{loss}")] = c.mean_diff
        if c.interval is not None:
            metrics[metric_key(f"diff_vs_ce_ci_low_{benchmark}_{loss}")] = c.interval.low
            metrics[metric_key(f"diff_vs_ce_ci_high_{benchmark}_{loss}")] = c.interval.high
            metrics[metric_key(f"diff_vs_ce_p_{benchmark}_{loss}")] = c.p_value
    return AnalysisOutput(summary=summary, table=table, findings=findings, figures=_curves(sweep),
                          tables={"stats": stats}, metrics=metrics)


def checks(sweep: SweepRecord, output: AnalysisOutput) -> list[Check]:
    """Completeness and the metric identities of a finished sweep."""
    runs = sweep.runs
    out = completeness_checks(sweep)
    in_range = all(((runs[m] >= 0) & (runs[m] <= 1)).all() for m in METRICS)
    out.append(Check("metrics in [0, 1]", bool(in_range)))
    identity = np.allclose(runs.robust_score, (runs.test_acc + 1 - runs.poison_fit) / 2, atol=1e-9)
    out.append(Check("robust_score = (test_acc + 1 - poison_fit) / 2", bool(identity)))
    finite = all(math.isfinite(v) for v in runs.final_train_loss)
    out.append(Check("final train loss finite", finite))
    return out


ANALYSIS = Analysis(analyze=analyze, checks=checks, table_name="leaderboard")

if __name__ == "__main__":  # the alias of `python -m analysis robust_loss FLAGS`
    from analysis.cli import main
    from analysis.common import exit_process

    exit_process(main(study="robust_loss", prog="python -m analysis.robust_loss"))
