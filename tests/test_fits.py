"""Sigmoid fits, thresholds and correlations on curves whose answers are known."""

import math

import numpy as np
import pytest

from core.fits import SigmoidFit, descending_sigmoid, first_crossing, fit_descending_sigmoid, pearson_with_ci


def test_sigmoid_fit_recovers_known_parameters():
    x = np.array([0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5])
    y = descending_sigmoid(x, 0.6, 8.0, 0.25, 0.3)
    fit = fit_descending_sigmoid(x, y)
    assert (fit.L, fit.k, fit.x0, fit.b) == pytest.approx((0.6, 8.0, 0.25, 0.3), rel=1e-3)
    assert fit.r2 == pytest.approx(1.0)


def test_sigmoid_fit_r2_drops_on_noise():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 0.5, 9)
    y = descending_sigmoid(x, 0.6, 8.0, 0.25, 0.3) + rng.normal(0, 0.05, size=9)
    assert 0.3 < fit_descending_sigmoid(x, y).r2 < 0.999


def test_threshold_is_first_grid_point_at_or_below_target():
    fit = SigmoidFit(L=0.7, k=10.0, x0=0.3, b=0.2, r2=1.0)
    target = 0.2 + 0.35  # the curve's midpoint, reached exactly at x0
    threshold = first_crossing(fit, target, x_max=0.6)
    assert threshold == pytest.approx(0.3, abs=0.6 / 999)
    assert fit(threshold) <= target


def test_threshold_none_when_curve_never_reaches_target():
    fit = SigmoidFit(L=0.1, k=10.0, x0=0.3, b=0.8, r2=1.0)  # never below 0.8
    assert first_crossing(fit, target=0.55, x_max=0.6) is None


def test_fit_needs_four_points():
    with pytest.raises(ValueError, match="at least 4 points, got 3"):
        fit_descending_sigmoid([0, 0.1, 0.2], [0.9, 0.8, 0.5])


def test_pearson_with_ci():
    x = np.log10([354, 1218, 4482, 17154, 67074, 265218])
    y = np.array([0.30, 0.32, 0.33, 0.33, 0.33, 0.32])
    c = pearson_with_ci(x, y)
    assert -1 <= c.ci_low < c.r < c.ci_high <= 1 and 0 < c.p_value < 1 and c.n == 6
    # Fisher z interval by hand
    z, se = math.atanh(c.r), 1 / math.sqrt(6 - 3)
    assert c.ci_low == pytest.approx(math.tanh(z - 1.959964 * se), abs=1e-4)
    perfect = pearson_with_ci([1, 2, 3, 4], [2, 4, 6, 8])
    assert perfect.r == pytest.approx(1.0)
    assert math.isnan(pearson_with_ci([1, 2, 3], [1, 1, 1]).r)
