"""poison_sensitivity: label-flip poison fraction x MLP width on Gaussian clusters.

A point trains ``Linear(d, h) - ReLU - Linear(h, K)`` with plain SGD on a
poisoned training split and measures train / clean-train / test accuracy.
Protocol: ``docs/poison_sensitivity.md``.  Its pieces are functions
with explicit arguments, so a variation (another model shape, another
optimizer) reuses them: :func:`poisoned_split` for the data,
:func:`core.fast_mlp.fit_mlp` for the training, :func:`measure` for the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.point import DataRecord, PointContext, PointResult, TrainedModel, generated
from core.poisoning import random_label_flip
from core.synthetic import gaussian_clusters
from core.validation import Int, Real, check_fields

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch (large and slow to import) is imported by the functions that compute: the launcher builds and checks configs only


@dataclass(frozen=True)
class PoisonSensitivityConfig:
    """One grid point of the study, with every protocol value."""

    poison_fraction: float = 0.0
    hidden_width: int = 32
    seed: int = 42
    n_samples: int = 500
    n_features: int = 10
    n_classes: int = 5
    cluster_std: float = 2.0
    center_scale: float = 2.0
    data_seed: int = 42
    train_fraction: float = 0.7
    epochs: int = 200
    lr: float = 0.05
    batch_size: int = 64
    torch_threads: int = 1

    RULES = {"poison_fraction": Real(0, 1), "hidden_width": Int(1), "seed": Int(0), "n_samples": Int(1),
             "n_features": Int(1), "n_classes": Int(2), "cluster_std": Real(0, low_open=True), "center_scale": Real(0),
             "data_seed": Int(0), "train_fraction": Real(0, 1, low_open=True, high_open=True), "epochs": Int(1),
             "lr": Real(0, low_open=True), "batch_size": Int(1), "torch_threads": Int(1)}

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n_samples < self.n_classes:
            raise ValueError(f"n_samples must be >= n_classes ({self.n_classes}), got {self.n_samples!r}")

    @property
    def poison_seed(self) -> int:
        """The poisoning RNG seed: ``seed + int(poison_fraction * 1000)``, as the paper draws it."""
        return self.seed + int(self.poison_fraction * 1000)


@dataclass(frozen=True)
class PoisonedSplit:
    """Train rows with poisoned and clean labels, and the clean test rows."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    train_clean_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor


def poisoned_split(*, n_samples: int, n_features: int, n_classes: int, cluster_std: float, center_scale: float,
                   data_seed: int, train_fraction: float, poison_fraction: float, poison_seed: int) -> PoisonedSplit:
    """Generate the clusters, poison the full label vector, then split (the protocol's order)."""
    import torch

    features, clean = gaussian_clusters(n_samples, n_features, n_classes, cluster_std, center_scale, data_seed)
    poisoned = random_label_flip(clean, poison_fraction, n_classes, poison_seed)
    order = np.random.RandomState(data_seed).permutation(n_samples)
    n_train = int(round(n_samples * train_fraction))
    train, test = order[:n_train], order[n_train:]
    as_inputs = lambda rows: torch.tensor(features[rows], dtype=torch.float32)  # noqa: E731
    as_labels = lambda labels, rows: torch.tensor(labels[rows], dtype=torch.long)  # noqa: E731
    return PoisonedSplit(
        train_inputs=as_inputs(train),
        train_labels=as_labels(poisoned, train),
        train_clean_labels=as_labels(clean, train),
        test_inputs=as_inputs(test),
        test_labels=as_labels(clean, test),
    )


def make_split(config: PoisonSensitivityConfig) -> PoisonedSplit:
    """:func:`poisoned_split` with the config's values."""
    return poisoned_split(
        n_samples=config.n_samples, n_features=config.n_features, n_classes=config.n_classes,
        cluster_std=config.cluster_std, center_scale=config.center_scale, data_seed=config.data_seed,
        train_fraction=config.train_fraction, poison_fraction=config.poison_fraction, poison_seed=config.poison_seed,
    )


def train(config: PoisonSensitivityConfig, split: PoisonedSplit,
          hidden_widths: tuple[int, ...] | None = None) -> tuple[nn.Module, list[float]]:
    """The MLP seeded with ``config.seed`` (one hidden layer of ``hidden_width`` unless ``hidden_widths`` says
    otherwise) trained with plain SGD; returns it and the per-epoch mean batch loss."""
    from core.fast_mlp import fit_mlp
    from core.training import seeded_mlp

    model = seeded_mlp(config.n_features, hidden_widths or (config.hidden_width,), config.n_classes, config.seed)
    losses = fit_mlp(model, split.train_inputs, split.train_labels, optimizer="sgd", lr=config.lr,
                     epochs=config.epochs, batch_size=config.batch_size, shuffle_seed=config.seed)
    return model, losses


def measure(model: nn.Module, split: PoisonedSplit, train_loss: list[float]) -> PointResult:
    """The study's metrics of a trained model: train (poisoned labels), clean-train and test accuracy, gen gap."""
    from core.training import accuracy, predict

    train_predictions = predict(model, split.train_inputs)
    train_acc = accuracy(train_predictions, split.train_labels)
    test_acc = accuracy(predict(model, split.test_inputs), split.test_labels)
    return PointResult(
        metrics={
            "train_acc": train_acc,
            "train_clean_acc": accuracy(train_predictions, split.train_clean_labels),
            "test_acc": test_acc,
            "gen_gap": train_acc - test_acc,
            "final_train_loss": train_loss[-1],
        },
        histories={"train_loss": train_loss},
    )


def dataset(config: PoisonSensitivityConfig) -> DataRecord:
    """The generated clusters a point trains and tests on (before poisoning), identified by the generator's values."""
    return generated("gaussian_clusters", "core.synthetic.gaussian_clusters", n_samples=config.n_samples,
                     n_features=config.n_features, n_classes=config.n_classes, cluster_std=config.cluster_std,
                     center_scale=config.center_scale, seed=config.data_seed)


def run_point(config: PoisonSensitivityConfig, context: PointContext) -> PointResult:
    """Train one MLP on the poisoned split (with ``config.torch_threads`` threads) and measure it."""
    from core.training import torch_threads

    with torch_threads(config.torch_threads):
        split = make_split(config)
        model, train_loss = train(config, split)
        return _result(config, model, split, train_loss)


def run_points(configs: list[PoisonSensitivityConfig], context: PointContext) -> list[PointResult]:
    """:func:`run_point` of each config, bit for bit, faster: one-thread points whose models and training
    share a shape (they differ in poison fraction, seed or data) train as one batched computation
    (:func:`core.fast_mlp.fit_mlps_sgd`)."""
    import torch

    from core.fast_mlp import fit_mlps_sgd
    from core.training import seeded_mlp, torch_threads

    groups: dict[object, list[int]] = {}
    for index, c in enumerate(configs):
        shape = (c.hidden_width, c.n_samples, c.n_features, c.n_classes, c.train_fraction, c.epochs, c.lr, c.batch_size)
        groups.setdefault(shape if c.torch_threads == 1 else index, []).append(index)
    results: list[PointResult | None] = [None] * len(configs)
    for members in groups.values():
        if len(members) == 1:
            results[members[0]] = run_point(configs[members[0]], context)
            continue
        batch = [configs[i] for i in members]
        with torch_threads(1):
            splits = [make_split(c) for c in batch]
            models = [seeded_mlp(c.n_features, (c.hidden_width,), c.n_classes, c.seed) for c in batch]
            losses = fit_mlps_sgd(models, torch.stack([s.train_inputs for s in splits]),
                                  torch.stack([s.train_labels for s in splits]), lr=batch[0].lr, epochs=batch[0].epochs,
                                  batch_size=batch[0].batch_size, shuffle_seeds=[c.seed for c in batch])
            for i, c, split, model, loss in zip(members, batch, splits, models, losses):
                results[i] = _result(c, model, split, loss)
    return results


def _result(config: PoisonSensitivityConfig, model: nn.Module, split: PoisonedSplit,
            train_loss: list[float]) -> PointResult:
    result = measure(model, split, train_loss)
    result.datasets = (dataset(config),)
    result.model = TrainedModel("mlp", {"in_features": config.n_features, "hidden_widths": [config.hidden_width],
                                        "num_classes": config.n_classes}, model, split.test_inputs[:2])
    return result
