"""Curve fits and correlations the analyses compute: sigmoid fits, thresholds, correlations with intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit
from scipy.stats import pearsonr


def descending_sigmoid(x: np.ndarray, L: float, k: float, x0: float, b: float) -> np.ndarray:
    """``L / (1 + exp(k (x - x0))) + b``."""
    return L / (1.0 + np.exp(k * (np.asarray(x, dtype=float) - x0))) + b


@dataclass(frozen=True)
class SigmoidFit:
    """A fitted descending sigmoid and its coefficient of determination."""

    L: float
    k: float
    x0: float
    b: float
    r2: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return descending_sigmoid(x, self.L, self.k, self.x0, self.b)


def _sigmoid_jacobian(x: np.ndarray, L: float, k: float, x0: float, b: float) -> np.ndarray:
    grow = np.exp(k * (np.asarray(x, dtype=float) - x0))
    denominator = (1.0 + grow) ** 2
    return np.stack([1.0 / (1.0 + grow), -L * grow * (x - x0) / denominator, L * grow * k / denominator,
                     np.ones_like(grow)], axis=1)


def fit_descending_sigmoid(x: np.ndarray, y: np.ndarray, start: SigmoidFit | None = None) -> SigmoidFit:
    """Least-squares fit with p0 = [max-min, 10, 0.2, min] and bounds
    L in [0, 1.5], k in [0.1, 100], x0 in [0, 1], b in [0, 1] (the paper's).

    ``start``: begin from that fit's parameters instead (a bootstrap refit starts from the estimate on the
    data it resamples: ~10x faster, as curve_fit's bounded solver converges in a few steps)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 4:
        raise ValueError(f"a 4-parameter sigmoid needs at least 4 points, got {len(x)}")
    p0 = [y.max() - y.min(), 10.0, 0.2, y.min()] if start is None else [start.L, start.k, start.x0, start.b]
    bounds = ([0.0, 0.1, 0.0, 0.0], [1.5, 100.0, 1.0, 1.0])
    popt, _ = curve_fit(descending_sigmoid, x, y, p0=p0, bounds=bounds, maxfev=10000,
                        jac=None if start is None else _sigmoid_jacobian)
    residual = float(np.sum((y - descending_sigmoid(x, *popt)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 0.0
    return SigmoidFit(*(float(v) for v in popt), r2=r2)


def first_crossing(fit: SigmoidFit, target: float, x_max: float, n_points: int = 1000) -> float | None:
    """Smallest x on ``linspace(0, x_max, n_points)`` where the curve is <= target; None if it never is."""
    grid = np.linspace(0.0, x_max, n_points)
    below = np.nonzero(fit(grid) <= target)[0]
    return float(grid[below[0]]) if len(below) else None


@dataclass(frozen=True)
class Correlation:
    """Pearson r with its two-sided p-value and 95% confidence interval."""

    r: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int


def pearson_with_ci(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> Correlation:
    """Pearson correlation, two-sided p, and the Fisher-z confidence interval (scipy)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 3:
        raise ValueError(f"a correlation with a confidence interval needs at least 3 points, got {len(x)}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, math.nan, math.nan, len(x))
    result = pearsonr(x, y)
    ci = result.confidence_interval(confidence_level=confidence)
    return Correlation(float(result.statistic), float(result.pvalue), float(ci.low), float(ci.high), len(x))
