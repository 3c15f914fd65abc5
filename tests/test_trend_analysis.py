"""The generic analysis (analysis.trend): a metric against one swept dimension, grouped by another, with seed-bootstrap
intervals, Pearson and Spearman trend tests, a plot, findings as metrics, and checks."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.common import run_analysis
from analysis.trend import trend_analysis
from core.stats import rows_pearson, trend_intervals, whole_seed_draws, resampled_means
from record.read import SweepRecord

XS, GROUPS, SEEDS = (0.0, 0.1, 0.2, 0.3, 0.4), (8, 32), (1, 2, 3)


def _sweep(runs: pd.DataFrame, grid: dict) -> SweepRecord:
    runs = runs.assign(run_id=[f"r{i}" for i in range(len(runs))], point=[f"p{i}" for i in range(len(runs))])
    return SweepRecord(client=None, tracking_uri="sqlite:///none.db", experiment_id="0", experiment="toy",
                       sweep_id="s", study="toy", name="toy", status="FINISHED", start_time=None, command=None,
                       fixed={}, grid=grid, expected_points=len(runs), runs=runs)


def _grid_runs(slopes: dict[int, float], noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"x": x, "width": g, "seed": s, "acc": 0.9 + slopes[g] * x + noise * rng.normal()}
                         for g in GROUPS for x in XS for s in SEEDS])


def test_a_planted_fall_is_found_with_intervals_and_a_flat_group_is_not(tmp_path):
    sweep = _sweep(_grid_runs({8: -1.0, 32: 0.0}), {"x": XS, "width": GROUPS, "seed": SEEDS})
    analysis = trend_analysis("acc", x="x", by="width")
    assert analysis.table_name == "acc_vs_x"
    status = run_analysis(analysis, sweep, tmp_path, validate=True, log=False)
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    falling, flat = summary["trends"]["8"], summary["trends"]["32"]
    assert falling["r"] < -0.95 and falling["ci_high"] < 0 and falling["rho"] == pytest.approx(-1.0)
    assert falling["r_boot"][1] < 0 and falling["slope"] == pytest.approx(-1.0, abs=0.05)
    assert flat["r_boot"][0] < 0 < flat["r_boot"][1], "no trend planted: the seed-bootstrap interval covers 0"
    assert summary["intervals"]["available"] and len(summary["cells"]) == 10
    assert all(cell["ci"][0] <= cell["acc_mean"] <= cell["ci"][1] for cell in summary["cells"])
    assert (tmp_path / "acc_vs_x.png").stat().st_size > 0 and (tmp_path / "acc_vs_x.csv").exists()
    output = analysis.analyze(sweep)
    assert output.metrics["acc_vs_x_r_width8"] == falling["r"]
    assert output.metrics["acc_vs_x_r_boot_high_width8"] == falling["r_boot"][1]
    assert {"acc_vs_x_rho_p_width32", "acc_vs_x_slope_width32", "acc_vs_x_r_ci_low_width8"} <= set(output.metrics)
    assert any("width 8: acc falls with x" in f for f in output.findings)
    assert any("survives at 95% across x values (Fisher CI excludes 0), by rank" in f for f in output.findings)


def test_one_seed_gives_no_intervals_and_a_failing_check():
    runs = _grid_runs({8: -1.0, 32: -0.5})
    sweep = _sweep(runs[runs.seed == 1], {"x": XS, "width": GROUPS, "seed": (1,)})
    analysis = trend_analysis("acc", x="x", by="width")
    output = analysis.analyze(sweep)
    assert not output.summary["intervals"]["available"] and output.summary["trends"]["8"]["r_boot"] is None
    assert "acc_vs_x_r_boot_low_width8" not in output.metrics and "acc_vs_x_r_width8" in output.metrics
    checks = {c.name: c.passed for c in analysis.checks(sweep, output)}
    assert checks["all grid points finished"] and not checks["intervals available (>= 2 seeds in every cell)"]


def test_a_search_sweep_without_groups_gets_the_trend_over_its_points():
    rng = np.random.default_rng(3)
    xs = rng.uniform(0, 0.5, 12)
    runs = pd.DataFrame({"x": xs, "seed": 1, "acc": 1.0 - xs + 0.01 * rng.normal(size=12)})
    sweep = _sweep(runs, {"seed": (1,)})
    output = trend_analysis("acc", x="x").analyze(sweep)
    trend = output.summary["trends"]["all"]
    assert trend["n"] == 12 and trend["r"] < -0.9 and trend["r_boot"] is None
    assert "acc_vs_x_r" in output.metrics and "acc_vs_x_slope" in output.metrics
    logged = trend_analysis("acc", x="x", log_x=True).analyze(_sweep(runs.assign(x=xs + 1), {"seed": (1,)}))
    assert logged.summary["trends"]["all"]["r"] < -0.9
    zero = trend_analysis("acc", x="x", log_x=True).analyze(_sweep(runs.assign(x=xs - xs.min()), {"seed": (1,)}))
    assert zero.findings == ["log_x: x has values <= 0, so no trend against log10(x) (the table gives acc per x)"]
    assert not zero.metrics and (zero.table["x"] >= 0).all()


def test_trend_intervals_are_the_percentiles_of_resampled_correlations():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    values = np.array([[1.0, 1.2], [2.1, 1.9], [2.9, 3.2], [4.2, 3.8]])
    means = resampled_means(values, whole_seed_draws(2, 4))
    r, rho = trend_intervals(x, means)
    assert 0.9 < r.low <= r.high <= 1.0 and rho.low == pytest.approx(1.0) and rho.high == pytest.approx(1.0)
    assert math.isnan(rows_pearson(x, np.ones((1, 4)))[0])
