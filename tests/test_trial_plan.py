"""How a sweep's grid points are cut into Ray trials."""

import pytest

from tune_jobs.runner import _plan_trials


@pytest.mark.parametrize("n_points, points_per_trial, slots, sizes", [
    (81, 21, 2, [21, 20, 20, 20]),  # poison_sensitivity on 2 CPUs: the size cap decides
    (81, 21, 16, [6] + [5] * 15),   # a 16-CPU cluster: one trial per slot, none idles
    (16, 21, 2, [8, 8]),
    (3, 1, 8, [1, 1, 1]),           # never more trials than points
    (0, 5, 2, []),
])
def test_trials_keep_the_order_cap_the_size_and_fill_the_slots(n_points, points_per_trial, slots, sizes):
    points = list(range(n_points))
    trials = _plan_trials(points, points_per_trial, slots)
    assert [len(t) for t in trials] == sizes
    assert [p for t in trials for p in t] == points
