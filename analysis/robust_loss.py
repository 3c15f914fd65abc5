"""The robust_loss leaderboard from MLflow: ``python -m analysis.robust_loss --help``.

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

from analysis.common import Analysis, AnalysisOutput, Check, completeness_checks, group_stats
from record.read import SweepRecord
from record.schema import metric_key

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
METRICS = ("test_acc", "poison_fit", "robust_score")


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f}" if n < 2 else f"{mean:.3f} ± {std:.3f}"


def leaderboard(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per loss, best mean robust_score first."""
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
            row[benchmark] = " / ".join(_cell(c[f"{m}_mean"], c[f"{m}_std"], c.n_seeds) for m in METRICS)
        row["mean robust_score"] = per_loss.robust_score_mean.mean()
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("mean robust_score", ascending=False)
    table["mean robust_score"] = table["mean robust_score"].map(lambda v: f"{v:.3f}")
    return table.rename(columns={b: f"{b} (test_acc / poison_fit / robust_score)" for b in benchmarks})


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
                mean = np.mean([s[:length] for s in series], axis=0)
                ax.plot(np.arange(length), mean, color=colors[loss], label=loss)
            ax.set(title=f"{benchmark}: {metric}", xlabel="epoch", ylabel=metric)
        row[0].legend(fontsize=8)
    return {"curves.png": figure}


def analyze(sweep: SweepRecord) -> AnalysisOutput:
    """Leaderboard, per-(benchmark, loss) statistics and training curves of one sweep."""
    stats = group_stats(sweep.runs, ["benchmark", "loss"], list(METRICS))
    table = leaderboard(stats)
    best = table.iloc[0]
    findings = [f"best mean robust_score: {best['loss']} ({best['mean robust_score']})"]
    for benchmark, rows in stats.groupby("benchmark"):
        top = rows.sort_values("robust_score_mean", ascending=False).iloc[0]
        findings.append(f"{benchmark}: {top.loss} leads with robust_score {top.robust_score_mean:.3f} "
                        f"(test_acc {top.test_acc_mean:.3f}, poison_fit {top.poison_fit_mean:.3f})")
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

if __name__ == "__main__":
    from analysis.common import exit_process, run_analysis

    exit_process(run_analysis(ANALYSIS, "robust_loss"))
