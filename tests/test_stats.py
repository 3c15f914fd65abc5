"""Uncertainty of findings: the seed bootstrap's coverage, paired comparisons, and no interval from one seed."""

import numpy as np
import pandas as pd

from analysis.adversarial_scaling import seed_bootstrap
from analysis.poison_sensitivity import aggregate, bootstrap, fit_size
from analysis.robust_loss import comparisons, score_intervals
from core.stats import paired_t, percentile_interval, resampled_means, seed_draws


def test_bootstrap_interval_of_a_mean_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(7)
    covered = 0
    simulations = 300
    for i in range(simulations):
        sample = rng.normal(1.0, 2.0, size=25)  # the mean's sampling distribution is known: N(1, 2^2/25)
        means = resampled_means(sample[None, :], seed_draws(25, 1, n_resamples=1000, seed=i))[:, 0]
        interval = percentile_interval(means)
        covered += interval.low <= 1.0 <= interval.high
    assert 0.89 <= covered / simulations <= 0.99, covered / simulations  # nominal 0.95 (percentile: a bit less)


def test_paired_comparison_of_identical_losses_is_not_significant_and_a_planted_difference_is():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.9, size=5)
    same = paired_t(base, base.copy())
    assert same.mean_diff == 0.0 and not same.significant and same.p_value == 1.0
    noisy = paired_t(base + rng.normal(0, 0.01, 5), base + rng.normal(0, 0.01, 5))
    assert not noisy.significant and noisy.interval.low < 0 < noisy.interval.high
    planted = paired_t(base + 0.1 + rng.normal(0, 0.01, 5), base)
    assert planted.significant and planted.interval.low < 0.1 < planted.interval.high and planted.p_value < 0.001


def _poison_runs(seeds, x0_by_width, noise=0.01):
    rng = np.random.default_rng(1)
    rows = []
    for width, x0 in x0_by_width.items():
        for fraction in (0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5):
            for seed in seeds:
                acc = 0.6 / (1 + np.exp(12 * (fraction - x0))) + 0.3 + rng.normal(0, noise)
                rows.append({"hidden_width": width, "poison_fraction": fraction, "seed": seed, "test_acc": acc,
                             "gen_gap": 0.1 + rng.normal(0, noise), "train_acc": acc, "train_clean_acc": acc})
    return pd.DataFrame(rows)


def _boot(runs):
    agg = aggregate(runs)
    fits = {int(w): fit_size(agg[agg.hidden_width == w], 0.2) for w in sorted(agg.hidden_width.unique())}
    return bootstrap(runs, "hidden_width", 0.2, fits)


def test_threshold_bootstrap_finds_a_planted_fall_and_not_a_tie():
    planted = _boot(_poison_runs(range(5), {32: 0.35, 64: 0.2}))
    assert planted["n_seeds"] == 5 and planted["n_resamples"] == 1000
    assert planted["differences"][(32, 64)].high < 0  # width 64's threshold is lower: shown at 95%
    tie = _boot(_poison_runs(range(5), {32: 0.3, 64: 0.3}, noise=0.03))
    assert tie["differences"][(32, 64)].low < 0 < tie["differences"][(32, 64)].high
    assert _boot(_poison_runs(range(5), {32: 0.35, 64: 0.2})) == planted, "fixed resampler: same intervals"


def test_one_seed_gives_no_interval_never_a_zero_width_one():
    assert _boot(_poison_runs([42], {32: 0.35, 64: 0.2})) is None
    runs = pd.DataFrame({"benchmark": "b", "loss": ["cross_entropy", "generalized_ce"], "seed": 42,
                         "robust_score": [0.8, 0.9]})
    assert all(v is None for v in score_intervals(runs).values())
    [comparison] = comparisons(runs).values()
    assert comparison.interval is None and not comparison.significant
    adversarial = pd.DataFrame({"dataset": "circles", "hidden_width": [16, 32, 64], "seed": 1,
                                "param_count": [354, 1218, 4482], "mean_fgsm_gap": [0.1, 0.2, 0.3]})
    assert seed_bootstrap(adversarial, "circles", "fgsm") is None


def test_one_seed_has_no_standard_deviation_never_a_zero_one():
    from analysis.common import group_stats, mean_std

    runs = _poison_runs([42, 123], {32: 0.35})
    runs = runs[(runs.seed == 42) | (runs.poison_fraction == 0.0)]  # two seeds at 0.0, one elsewhere
    agg = aggregate(runs).set_index("poison_fraction")
    assert agg.test_acc_std.notna().sum() == 1 and agg.loc[0.0, "n_seeds"] == 2
    assert np.isclose(agg.loc[0.0, "test_acc_std"], runs[runs.poison_fraction == 0.0].test_acc.std(ddof=1))
    assert agg.drop(index=0.0).test_acc_std.isna().all() and (agg.drop(index=0.0).n_seeds == 1).all()
    stats = group_stats(pd.DataFrame({"g": ["a", "a", "b"], "x": [0.5, 0.7, 0.25]}), ["g"], ["x"])
    cells = [mean_std(r.x_mean, r.x_std) for r in stats.itertuples()]
    assert cells == ["0.600 ± 0.141", "0.250"], "a table shows a std only where there is one"


def _rows_and_pid(block, scale):
    import os

    return block * scale, os.getpid()


def test_map_blocks_splits_rows_over_processes_and_keeps_their_order():
    import os

    from analysis.common import map_blocks

    items = np.arange(24.0).reshape(12, 2)
    parts = map_blocks(_rows_and_pid, items, 3.0)
    assert np.array_equal(np.concatenate([p[0] for p in parts]), items * 3.0)
    if len(os.sched_getaffinity(0)) > 1:  # one block per core, computed in other processes
        assert len(parts) == min(len(os.sched_getaffinity(0)), 8) and os.getpid() not in {p[1] for p in parts}
