"""The poison_sensitivity protocol pieces, each against the spec."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from core.poisoning import next_class_flip, random_label_flip
from core.point import PLAIN
from core.studies.poison_sensitivity import PoisonSensitivityConfig, make_split, run_point, run_points, train
from core.synthetic import gaussian_clusters
from core.fast_mlp import fit_mlp, fit_mlps_sgd, nll_mean
from core.training import dataloader_epoch_order, seeded_mlp, torch_threads


def test_gaussian_clusters_statistics():
    X, y = gaussian_clusters(500, 10, 5, cluster_std=2.0, center_scale=2.0, seed=42)
    assert X.shape == (500, 10) and y.shape == (500,)
    assert np.bincount(y).tolist() == [100] * 5
    centers = np.random.RandomState(42).randn(5, 10) * 2.0
    for c in range(5):
        rows = X[y == c]
        assert np.allclose(rows.mean(0), centers[c], atol=3 * 2.0 / np.sqrt(100))
        assert (rows - rows.mean(0)).std() == pytest.approx(2.0, rel=0.1)
    X2, y2 = gaussian_clusters(500, 10, 5, 2.0, 2.0, seed=42)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(y[:50], np.sort(y[:50])), "the set must be shuffled"


def test_gaussian_clusters_remainder_goes_to_first_classes():
    _, y = gaussian_clusters(13, 2, 5, 1.0, 2.0, seed=0)
    assert np.bincount(y).tolist() == [3, 3, 3, 2, 2]


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_random_label_flip_count_and_never_true_class(fraction):
    labels = np.arange(500) % 5
    poisoned = random_label_flip(labels, fraction, 5, seed=7)
    changed = poisoned != labels
    assert changed.sum() == round(500 * fraction)
    assert set(np.unique(poisoned)) <= set(range(5))
    assert labels.tolist() == (np.arange(500) % 5).tolist(), "input must not be modified"


def test_random_label_flip_matches_the_papers_draws():
    # the paper draws indices with choice(n, m, replace=False), then rng.choice(list of wrong classes) per index
    labels = np.arange(200) % 5
    rng = np.random.RandomState(123)
    expected = labels.copy()
    for i in rng.choice(200, size=40, replace=False):
        expected[i] = rng.choice([c for c in range(5) if c != expected[i]])
    assert np.array_equal(random_label_flip(labels, 0.2, 5, seed=123), expected)


def test_random_label_flip_rejects_bad_fraction():
    with pytest.raises(ValueError, match="poison_fraction must be in \\[0, 1\\], got 1.5"):
        random_label_flip(np.zeros(10, dtype=int), 1.5, 5, seed=0)


def test_next_class_flip():
    labels = np.arange(1000) % 10
    poisoned, indices = next_class_flip(labels, 0.15, 10, seed=42)
    assert len(indices) == 150 and len(set(indices.tolist())) == 150
    assert np.array_equal(poisoned[indices], (labels[indices] + 1) % 10)
    untouched = np.setdiff1d(np.arange(1000), indices)
    assert np.array_equal(poisoned[untouched], labels[untouched])


def test_split_sizes_and_labels():
    config = PoisonSensitivityConfig(poison_fraction=0.3)
    split = make_split(config)
    assert len(split.train_labels) == 350 and len(split.test_labels) == 150
    assert split.train_inputs.dtype == torch.float32 and split.train_labels.dtype == torch.long
    flipped = (split.train_labels != split.train_clean_labels).sum().item()
    assert 0 < flipped < 150  # 150 of 500 flipped before the split; ~70 % of them land in train
    clean = make_split(PoisonSensitivityConfig(poison_fraction=0.0))
    assert torch.equal(clean.test_labels, split.test_labels), "test labels are always clean"
    assert torch.equal(clean.train_labels, clean.train_clean_labels)


def test_epoch_order_matches_dataloader():
    data = TensorDataset(torch.arange(350))
    loader = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(7))
    mine = torch.Generator().manual_seed(7)
    for _ in range(3):
        expected = torch.cat([batch[0] for batch in loader])
        assert torch.equal(dataloader_epoch_order(mine, 350), expected)


def _reference_trial(config):
    """The protocol with a real DataLoader and torch.optim.SGD, as the paper's code runs it."""
    split = make_split(config)
    torch.manual_seed(config.seed)
    model = torch.nn.Sequential(torch.nn.Linear(config.n_features, config.hidden_width), torch.nn.ReLU(),
                                torch.nn.Linear(config.hidden_width, config.n_classes))
    loader = DataLoader(TensorDataset(split.train_inputs, split.train_labels), batch_size=config.batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    with torch.no_grad():
        return (model(split.test_inputs).argmax(1) == split.test_labels).sum().item() / len(split.test_labels), model


def test_fast_loop_is_bitwise_the_reference_loop():
    config = PoisonSensitivityConfig(poison_fraction=0.2, hidden_width=32, seed=7, epochs=15)
    torch.set_num_threads(1)
    reference_acc, _ = _reference_trial(config)
    result = run_point(config, PLAIN)
    assert result.metrics["test_acc"] == reference_acc
    assert len(result.histories["train_loss"]) == 15
    assert result.metrics["gen_gap"] == pytest.approx(result.metrics["train_acc"] - result.metrics["test_acc"])


def test_fast_loop_is_bitwise_the_reference_loop_for_width_not_a_multiple_of_16():
    config = PoisonSensitivityConfig(poison_fraction=0.1, hidden_width=20, seed=3, epochs=4)
    torch.set_num_threads(1)
    reference_acc, reference_model = _reference_trial(config)
    model, train_loss = train(config, make_split(config))
    assert len(train_loss) == 4
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference_model.parameters()))
    assert run_point(config, PLAIN).metrics["test_acc"] == reference_acc


def test_run_points_is_bitwise_run_point_for_every_config():
    # shapes that batch (odd widths: outputs aligned unlike a contiguous stack), ones that run alone (two threads,
    # a last batch too small for the batched GEMM), and data of another seed in the same batch
    configs = [PoisonSensitivityConfig(poison_fraction=f, hidden_width=w, seed=s, data_seed=d, epochs=12)
               for f in (0.0, 0.3) for w in (7, 32, 33) for s in (1, 5) for d in (42, 3)]
    configs += [PoisonSensitivityConfig(hidden_width=20, epochs=12, torch_threads=2),
                PoisonSensitivityConfig(hidden_width=2, epochs=12, n_samples=502),
                PoisonSensitivityConfig(hidden_width=2, epochs=12, n_samples=502, seed=3)]
    together = run_points(configs, PLAIN)
    alone = [run_point(c, PLAIN) for c in configs]
    assert together == alone
    for a, b in zip(together, alone):
        assert all(torch.equal(p, q) for p, q in zip(a.model.module.parameters(), b.model.module.parameters()))


@pytest.mark.parametrize("batch", [1, 2, 3, 15, 16, 17, 30, 64, 257, 1000])
def test_nll_mean_is_the_kernels_mean_to_the_bit(batch):
    log_probs = torch.log_softmax(torch.randn(batch, 5, generator=torch.Generator().manual_seed(batch)) * 3, 1)
    targets = torch.arange(batch) % 5
    expected = torch.nn.functional.nll_loss(log_probs, targets)
    assert torch.equal(nll_mean(log_probs.gather(1, targets[:, None])[:, 0]), expected)


def test_fit_mlps_sgd_trains_deeper_mlps_as_fit_mlp_does():
    split = make_split(PoisonSensitivityConfig(poison_fraction=0.1))
    models = [seeded_mlp(10, (24, 16), 5, seed) for seed in (1, 2, 3)]
    copies = [seeded_mlp(10, (24, 16), 5, seed) for seed in (1, 2, 3)]
    with torch_threads(1):
        losses = fit_mlps_sgd(models, torch.stack([split.train_inputs] * 3), torch.stack([split.train_labels] * 3),
                              lr=0.05, epochs=5, batch_size=64, shuffle_seeds=[4, 5, 6])
        expected = [fit_mlp(m, split.train_inputs, split.train_labels, optimizer="sgd", lr=0.05, epochs=5,
                            batch_size=64, shuffle_seed=s) for m, s in zip(copies, (4, 5, 6))]
    assert losses == expected
    assert all(torch.equal(p, q) for a, b in zip(models, copies) for p, q in zip(a.parameters(), b.parameters()))


def test_same_config_same_numbers():
    config = PoisonSensitivityConfig(poison_fraction=0.1, hidden_width=16, seed=3, epochs=5)
    assert run_point(config, PLAIN) == run_point(config, PLAIN)


@pytest.mark.parametrize("field, value, message", [
    ("poison_fraction", 1.5, "poison_fraction must be in [0, 1], got 1.5"),
    ("poison_fraction", -0.1, "poison_fraction must be in [0, 1], got -0.1"),
    ("hidden_width", 0, "hidden_width must be >= 1, got 0"),
    ("epochs", 0, "epochs must be >= 1, got 0"),
    ("lr", 0.0, "lr must be > 0, got 0.0"),
    ("torch_threads", 0, "torch_threads must be >= 1, got 0"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError) as error:
        PoisonSensitivityConfig(**{field: value})
    assert str(error.value) == message
