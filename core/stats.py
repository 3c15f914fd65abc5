"""Uncertainty of findings over seeds: a seed bootstrap, percentile intervals, a paired t comparison.

The resampler is documented and fixed so an analysis gives the same intervals every time: ``N_RESAMPLES``
draws from ``numpy.random.default_rng(BOOTSTRAP_SEED)``; within each group (a poison fraction, a model width
position) the seeds are drawn with replacement, independently per group, and the same draws serve every
model size, so differences between sizes are paired by seed.  Intervals are equal-tailed percentile
intervals at ``CONFIDENCE``.  With fewer than two seeds there is no interval (``None``), never a zero-width one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A confidence interval; ``low``/``high`` may be +-inf (an unreached threshold in some resamples)."""

    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the interval."""
        return value < self.low or value > self.high

    def __str__(self) -> str:
        return f"[{self.low:.3g}, {self.high:.3g}]"


def seed_draws(n_seeds: int, n_groups: int, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled seed positions, shape ``(n_resamples, n_groups, n_seeds)``: each group's seeds drawn with
    replacement, independently per group."""
    return np.random.default_rng(seed).integers(0, n_seeds, size=(n_resamples, n_groups, n_seeds))


def resampled_means(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``values`` of shape ``(..., n_groups, n_seeds)`` averaged over each resample's seeds:
    shape ``(n_resamples, ..., n_groups)``."""
    values = np.asarray(values, dtype=float)
    lead = values.ndim - 2
    index = draws.reshape(draws.shape[0], *([1] * lead), *draws.shape[1:])
    expanded = np.broadcast_to(values, (draws.shape[0], *values.shape))
    return np.take_along_axis(expanded, np.broadcast_to(index, expanded.shape), axis=-1).mean(axis=-1)


def percentile_interval(samples, confidence: float = CONFIDENCE) -> Interval | None:
    """The equal-tailed percentile interval of bootstrap ``samples`` (NaN dropped, +-inf kept: order
    statistics, no interpolation); None when no sample is a number."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail], method="inverted_cdf")
    return Interval(float(low), float(high))


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` paired by seed: mean difference, its t interval, two-sided p, number of pairs, the test's name."""

    mean_diff: float
    interval: Interval | None
    p_value: float
    n: int
    test: str = "paired t"

    @property
    def significant(self) -> bool:
        """The interval excludes zero (never with fewer than two pairs)."""
        return self.interval is not None and self.interval.excludes(0.0)


def paired_t(a, b, confidence: float = CONFIDENCE) -> PairedComparison:
    """Paired t comparison of ``a`` and ``b`` (same seeds, same order): the mean of ``a - b`` with its
    Student-t interval (n - 1 degrees of freedom) and two-sided p-value.  Identical values give the interval
    [0, 0] and p = 1 (no difference); a single pair gives no interval."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    if n < 2:
        return PairedComparison(mean, None, math.nan, n)
    sd = float(diff.std(ddof=1))
    if sd == 0.0:
        return PairedComparison(mean, Interval(mean, mean), 1.0 if mean == 0.0 else 0.0, n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(diff, 0.0).pvalue)
    return PairedComparison(mean, Interval(mean - half, mean + half), p, n)


def t_interval(values, confidence: float = CONFIDENCE) -> Interval | None:
    """Student-t interval of the mean of ``values`` (None below two values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, len(values) - 1)) * sd / math.sqrt(len(values))
    return Interval(mean - half, mean + half)


def whole_seed_draws(n_seeds: int, n_groups: int, n_resamples: int = N_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled seed positions, shape ``(n_resamples, n_groups, n_seeds)``, the same draw for every group: whole
    seeds resampled, so a seed's values at every group stay together (a trend across groups is paired by seed)."""
    draws = seed_draws(n_seeds, 1, n_resamples, seed)
    return np.broadcast_to(draws, (n_resamples, n_groups, n_seeds))


def rows_pearson(x, ys) -> np.ndarray:
    """Pearson r of ``x`` with each row of ``ys`` (shape ``(rows, len(x))``; NaN for a constant row)."""
    x = np.asarray(x, dtype=float)
    xc = x - x.mean()
    yc = ys - ys.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (yc @ xc) / np.sqrt((yc ** 2).sum(axis=1) * (xc ** 2).sum())


def ranks(values) -> np.ndarray:
    """Ranks along the last axis (ties averaged), as Spearman's rho uses them."""
    return stats.rankdata(values, axis=-1)


def trend_intervals(x, means) -> tuple[Interval | None, Interval | None]:
    """Percentile intervals of Pearson r and Spearman rho between ``x`` and each bootstrap resample's means
    (``means``: shape ``(n_resamples, len(x))``, e.g. :func:`resampled_means` over :func:`whole_seed_draws`)."""
    x = np.asarray(x, dtype=float)
    return percentile_interval(rows_pearson(x, means)), percentile_interval(rows_pearson(ranks(x), ranks(means)))
