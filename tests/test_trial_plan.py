"""How a sweep's grid points are cut into Ray trials."""

import pytest

from tune_jobs.tuner import plan_trials


@pytest.mark.parametrize("n_points, points_per_trial, slots, sizes", [
    (81, 21, 2, [21, 20, 20, 20]),  # poison_sensitivity on 2 CPUs: the size cap decides
    (81, 21, 16, [6] + [5] * 15),   # a 16-CPU cluster: one trial per slot, none idles
    (16, 21, 2, [8, 8]),
    (3, 1, 8, [1, 1, 1]),           # never more trials than points
    (0, 5, 2, []),
])
def test_trials_keep_the_order_cap_the_size_and_fill_the_slots(n_points, points_per_trial, slots, sizes):
    points = list(range(n_points))
    trials = plan_trials(points, points_per_trial, slots)
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


def test_a_point_crosses_ray_tunes_saved_experiment_exactly():
    """Ray Tune keeps a trial's config as JSON (a tuple would come back a list: the robust_loss --resume defect);
    a packed point and the typed context come back exactly, whatever field types the study declares."""
    import json
    from dataclasses import dataclass

    from ray.tune.utils.serialization import TuneFunctionDecoder, TuneFunctionEncoder

    from tune_jobs.trial import TrialContext, grid_trial, pack_point, trial_context

    @dataclass(frozen=True)
    class Config:
        pairs: tuple = (("q", 0.7), ("beta", 1))
        widths: list = (8, 16)
        nested: tuple = ((1, (2, 3)), ())
        flag: bool = True
        nothing: object = None
        name: str = "a,b=c"
        tiny: float = 1e-300

    config = Config(widths=[8, 16])
    context = TrialContext(study="m:STUDY", tracking_uri="sqlite:///x.db", experiment_id="1", sweep_id="s",
                           n_points=1, point_dims=("pairs",), provenance={"k": "v"})
    saved = json.dumps({"trial": grid_trial(context, [pack_point(config)])}, cls=TuneFunctionEncoder)
    restored = json.loads(saved, cls=TuneFunctionDecoder, allow_cloudpickle=True)  # as Ray Tune's restore does
    assert trial_context(restored) == context
    from record.schema import unpack

    assert Config(**unpack(restored["trial"]["points"][0])) == config
    assert json.loads(json.dumps({"p": config.pairs}))["p"] != config.pairs, "plain JSON would not round-trip"


@pytest.mark.parametrize("name", ["poison_sensitivity", "adversarial_scaling", "robust_loss"])
def test_every_point_of_a_built_in_study_crosses_ray_tunes_saved_experiment_exactly(name):
    """Every default point, and one with every protocol value set, comes back from Ray Tune's JSON state equal."""
    import json

    from ray.tune.utils.serialization import TuneFunctionDecoder, TuneFunctionEncoder

    from tune_jobs.study import load_study
    from tune_jobs.trial import pack_point, unpack_point

    study = load_study(name)
    points = study.points(study.grid, study.defaults())
    for config in points:
        saved = json.dumps({"points": [pack_point(config)]}, cls=TuneFunctionEncoder)
        (text,) = json.loads(saved, cls=TuneFunctionDecoder, allow_cloudpickle=True)["points"]
        restored = unpack_point(study, text)
        assert restored == config and all(type(getattr(restored, f)) is type(getattr(config, f))
                                          for f in config.__dataclass_fields__)
