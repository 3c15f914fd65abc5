"""adversarial_scaling: data generators, config validation, training loop, trial."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from core.models import count_parameters
from core.point import PLAIN
from core.studies.adversarial_scaling import (
    AdversarialScalingConfig,
    build_seeded_model,
    make_data,
    run_point,
    train,
)
from core.synthetic import circles, moons
from core.training import torch_threads


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread, as the runner gives each trial: fast on a busy 2-core box, and reproducible."""
    with torch_threads(1):
        yield


# --- generators -----------------------------------------------------------------------


def test_circles_radii_before_noise():
    x, y = circles(2000, 0.0, seed=0)
    radius = np.hypot(x[:, 0], x[:, 1])
    np.testing.assert_allclose(radius[y == 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(radius[y == 1], 0.5, atol=1e-6)


def test_circles_statistics_with_noise():
    x, y = circles(2000, 0.15, seed=42)
    assert x.shape == (2000, 2) and x.dtype == np.float32
    assert y.shape == (2000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [1000, 1000]
    radius = np.hypot(x[:, 0], x[:, 1])
    assert abs(radius[y == 0].mean() - 1.0) < 0.03
    assert abs(radius[y == 1].mean() - 0.5) < 0.05  # noise pushes small radii outwards
    assert abs(x[:, 0].mean()) < 0.05 and abs(x[:, 1].mean()) < 0.05
    # shuffled: the labels are not in generation order
    assert 0 < y[:1000].sum() < 1000


def test_moons_geometry_before_noise():
    x, y = moons(2000, 0.0, seed=0)
    upper, lower = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0, atol=1e-6)
    assert upper[:, 1].min() >= -1e-6
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0, atol=1e-6)
    assert lower[:, 1].max() <= 0.5 + 1e-6
    # linspace(0, pi): both end points are present
    assert np.isclose(upper[:, 0], -1.0, atol=1e-6).any() and np.isclose(upper[:, 0], 1.0, atol=1e-6).any()


def test_moons_statistics_with_noise():
    x, y = moons(2000, 0.15, seed=7)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [1000, 1000]
    assert np.allclose(x[y == 0].mean(axis=0), [0.0, 2 / np.pi], atol=0.03)
    assert np.allclose(x[y == 1].mean(axis=0), [1.0, 0.5 - 2 / np.pi], atol=0.03)


@pytest.mark.parametrize("generator", [circles, moons])
def test_generators_are_deterministic_per_seed(generator):
    a, b, c = generator(500, 0.15, seed=1), generator(500, 0.15, seed=1), generator(500, 0.15, seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_generators_follow_the_protocol_draw_order():
    # circles: uniform angles (outer, then inner), normal noise, permutation -- one default_rng
    rng = np.random.default_rng(5)
    outer, inner = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0, 2 * np.pi, 3)
    pts = np.vstack([np.c_[np.cos(outer), np.sin(outer)], 0.5 * np.c_[np.cos(inner), np.sin(inner)]])
    pts = pts + rng.normal(0, 0.1, pts.shape)
    order = rng.permutation(6)
    x, y = circles(6, 0.1, seed=5)
    assert np.array_equal(x, pts[order].astype(np.float32))
    assert np.array_equal(y, np.array([0, 0, 0, 1, 1, 1])[order])


def test_data_split_sizes_and_types():
    x_train, y_train, x_test, y_test = make_data(AdversarialScalingConfig("circles", 16, 42))
    assert (len(x_train), len(x_test)) == (1600, 400)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    full_x, _ = circles(2000, 0.15, 42)
    assert np.array_equal(x_test.numpy(), full_x[1600:])


@pytest.mark.parametrize("h", [1, 16, 64])
def test_param_count(h):
    config = AdversarialScalingConfig("moons", h, 0)
    assert count_parameters(build_seeded_model(config)) == h * h + 6 * h + 2 == config.param_count


def test_model_init_is_seeded_and_leaves_global_rng_alone():
    config = AdversarialScalingConfig("moons", 8, 3)
    state = torch.get_rng_state()
    a, b = build_seeded_model(config), build_seeded_model(config)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# --- config validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_width": 0}, "hidden_width must be >= 1, got 0"),
        ({"hidden_width": 2.5}, "hidden_width must be an integer, got 2.5"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"epsilons": (0.1, -0.1)}, "epsilons must be >= 0.0, got -0.1"),
        ({"epsilons": ()}, "epsilons must be a non-empty sequence"),
        ({"epsilons": (0.1, float("nan"))}, "epsilons must be a finite number, got nan"),
        ({"lr": 0.0}, "lr must be > 0.0, got 0.0"),
        ({"noise": -0.5}, "noise must be >= 0.0, got -0.5"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"max_epochs": 0}, "max_epochs must be >= 1, got 0"),
        ({"patience": 0}, "patience must be >= 1, got 0"),
        ({"min_delta": -1e-3}, "min_delta must be >= 0.0, got -0.001"),
        ({"pgd_steps": 0}, "pgd_steps must be >= 1, got 0"),
        ({"pgd_step_fraction": 0.0}, "pgd_step_fraction must be > 0.0, got 0.0"),
        ({"train_fraction": 1.0}, "train_fraction must leave at least one train and one test sample"),
    ],
)
def test_config_validation_names_field_and_value(changes, message):
    base = {"dataset": "circles", "hidden_width": 16, "seed": 42}
    with pytest.raises(ValueError) as info:
        AdversarialScalingConfig(**{**base, **changes})
    assert message in str(info.value)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match=r"circles.*moons.*spirals"):
        AdversarialScalingConfig("spirals", 16, 42)


def test_config_defaults_and_coercion():
    config = AdversarialScalingConfig("moons", np.int64(32), 7, epsilons=[0.1, 1])
    assert config.hidden_width == 32 and type(config.hidden_width) is int
    assert config.epsilons == (0.1, 1.0)
    default = AdversarialScalingConfig("moons", 32, 7)
    assert (default.n_samples, default.n_train, default.batch_size, default.max_epochs) == (2000, 1600, 256, 2000)
    assert default.epsilons == (0.01, 0.05, 0.1, 0.2, 0.5)


# --- training loop and trial -----------------------------------------------------------


@pytest.mark.parametrize("width", [16, 32])
def test_train_matches_a_dataloader_loop_bitwise(width):
    # 560 training points in batches of 128: four full batches and one of 48
    config = AdversarialScalingConfig("moons", width, 5, n_samples=700, batch_size=128, max_epochs=3)
    x_train, y_train, _, _ = make_data(config)
    fast_model = build_seeded_model(config)
    fast = train(fast_model, x_train, y_train, config)

    model = build_seeded_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed))
    reference = []
    for _ in range(config.max_epochs):
        total, batches = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        reference.append(total / batches)
    assert fast == reference
    assert all(torch.equal(p, q) for p, q in zip(fast_model.parameters(), model.parameters()))


def test_early_stopping_counts_patience_epochs():
    # min_delta larger than any loss: only the first epoch improves on +inf
    config = AdversarialScalingConfig("circles", 4, 0, n_samples=100, max_epochs=50, patience=3, min_delta=100.0)
    x_train, y_train, _, _ = make_data(config)
    assert len(train(build_seeded_model(config), x_train, y_train, config)) == 4


SMALL = AdversarialScalingConfig("circles", 8, 3, n_samples=300, max_epochs=5, epsilons=(0.0, 0.1, 0.5), pgd_steps=3)


def test_reduced_trial_is_well_formed():
    result = run_point(SMALL, PLAIN)
    m = result.metrics
    per_epsilon = {f"{attack}_acc/eps_{eps:g}" for attack in ("fgsm", "pgd") for eps in (0.0, 0.1, 0.5)}
    assert set(m) == {"clean_acc", "epochs_trained", "final_train_loss", "mean_fgsm_gap", "mean_pgd_gap", *per_epsilon}
    assert 0.0 <= m["clean_acc"] <= 1.0
    assert 1 <= m["epochs_trained"] <= 5 and len(result.histories["train_loss"]) == m["epochs_trained"]
    assert m["final_train_loss"] == result.histories["train_loss"][-1]
    h = result.histories
    for name in ("fgsm_acc", "pgd_acc", "fgsm_gap", "pgd_gap"):
        assert len(h[name]) == 3
    assert h["fgsm_acc"][0] == h["pgd_acc"][0] == m["clean_acc"]  # eps = 0
    assert h["fgsm_gap"] == [m["clean_acc"] - a for a in h["fgsm_acc"]]
    assert h["pgd_gap"] == [m["clean_acc"] - a for a in h["pgd_acc"]]
    assert m["mean_fgsm_gap"] == pytest.approx(np.mean(h["fgsm_gap"]))
    assert m["mean_pgd_gap"] == pytest.approx(np.mean(h["pgd_gap"]))
    assert [m["pgd_acc/eps_0"], m["pgd_acc/eps_0.1"], m["pgd_acc/eps_0.5"]] == h["pgd_acc"]
    assert h["fgsm_acc_by_eps_x1000"] == {0: h["fgsm_acc"][0], 100: h["fgsm_acc"][1], 500: h["fgsm_acc"][2]}
    assert h["pgd_acc_by_eps_x1000"] == {0: h["pgd_acc"][0], 100: h["pgd_acc"][1], 500: h["pgd_acc"][2]}
    [data] = result.datasets
    assert (data.name, data.source_type, data.context) == ("circles", "code", "training")
    assert data.profile == {"n_samples": 300, "noise": 0.15, "seed": 3}
    assert data == run_point(dataclasses.replace(SMALL, hidden_width=16), PLAIN).datasets[0]  # the same data
    assert data.digest != run_point(dataclasses.replace(SMALL, seed=4), PLAIN).datasets[0].digest
    assert result.params == {"param_count": 8 * 8 + 6 * 8 + 2}
    lines = result.artifacts["robustness.csv"].splitlines()
    assert lines[0] == "epsilon,fgsm_acc,pgd_acc,fgsm_gap,pgd_gap"
    assert [float(line.split(",")[0]) for line in lines[1:]] == [0.0, 0.1, 0.5]
    assert float(lines[2].split(",")[2]) == h["pgd_acc"][1]
    result.check_finite()


def test_same_config_gives_identical_results_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    first, second = run_point(SMALL, PLAIN), run_point(dataclasses.replace(SMALL), PLAIN)
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)
    assert run_point(dataclasses.replace(SMALL, seed=4), PLAIN).histories["train_loss"] != first.histories["train_loss"]
