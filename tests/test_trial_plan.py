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


def test_ray_tune_makes_each_trial_from_its_own_grid_value_without_copying_the_others():
    """Ray Tune deep-copies the whole search space for each trial it makes: the Ray trials' points, as Shared grid
    values, are handed over as they are (no copy per trial of every trial's points), and survive pickling (Ray Tune
    saves its experiment)."""
    import pickle

    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    from tune_jobs.space import Shared

    trials = [Shared(context={"study": "s"}, points=[{"seed": i, "widths": (8, 8)}]) for i in range(50)]
    configs = [spec["trial"] for _, spec in generate_variants({"trial": tune.grid_search(trials)})]
    assert len(configs) == 50 and all(made is given for made, given in zip(configs, trials))
    restored = pickle.loads(pickle.dumps(trials[7]))
    assert type(restored) is Shared and restored == trials[7] and restored["points"][0]["widths"] == (8, 8)
