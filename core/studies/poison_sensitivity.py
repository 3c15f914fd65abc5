"""poison_sensitivity: label-flip poison fraction x MLP width on Gaussian clusters.

One trial trains ``Linear(d, h) - ReLU - Linear(h, K)`` with plain SGD on a
poisoned training split and measures train / clean-train / test accuracy.
Protocol: ``shared/specs/poison_sensitivity.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.models import build_model
from core.poisoning import random_label_flip
from core.synthetic import gaussian_clusters
from core.training import FastMLPSGD, accuracy, dataloader_epoch_order
from core.trial import TrialResult


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

    def __post_init__(self) -> None:
        checks = {
            "poison_fraction": 0.0 <= self.poison_fraction <= 1.0,
            "train_fraction": 0.0 < self.train_fraction < 1.0,
            "hidden_width": self.hidden_width >= 1,
            "n_features": self.n_features >= 1,
            "n_classes": self.n_classes >= 2,
            "n_samples": self.n_samples >= self.n_classes,
            "cluster_std": self.cluster_std > 0,
            "center_scale": self.center_scale >= 0,
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "torch_threads": self.torch_threads >= 1,
            "seed": self.seed >= 0,
            "data_seed": self.data_seed >= 0,
        }
        rules = {
            "poison_fraction": "in [0, 1]", "train_fraction": "in (0, 1)", "n_classes": ">= 2",
            "n_samples": f">= n_classes ({self.n_classes})", "cluster_std": "> 0", "center_scale": ">= 0",
            "lr": "> 0", "seed": ">= 0", "data_seed": ">= 0",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {rules.get(name, '>= 1')}, got {getattr(self, name)!r}")

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


def make_split(config: PoisonSensitivityConfig) -> PoisonedSplit:
    """Generate the clusters, poison the full label vector, then split (protocol order)."""
    features, clean = gaussian_clusters(
        config.n_samples, config.n_features, config.n_classes,
        config.cluster_std, config.center_scale, config.data_seed,
    )
    poisoned = random_label_flip(clean, config.poison_fraction, config.n_classes, config.poison_seed)
    order = np.random.RandomState(config.data_seed).permutation(config.n_samples)
    n_train = int(round(config.n_samples * config.train_fraction))
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


def train(config: PoisonSensitivityConfig, split: PoisonedSplit) -> tuple[nn.Module, list[float]]:
    """The MLP seeded with ``config.seed``, trained with plain SGD; returns it and the per-epoch mean batch loss.

    Batches follow ``DataLoader(shuffle=True)``'s order for a generator seeded
    with ``config.seed``; :class:`core.training.FastMLPSGD` makes each step
    bit-identical to autograd + ``torch.optim.SGD`` (one thread).
    """
    torch.manual_seed(config.seed)
    model = build_model("mlp", in_features=config.n_features, hidden_widths=(config.hidden_width,),
                        num_classes=config.n_classes)
    trainer = FastMLPSGD(model, config.lr)
    shuffle = torch.Generator().manual_seed(config.seed)
    n_train = len(split.train_labels)
    shuffled_x = torch.empty_like(split.train_inputs)
    shuffled_y = torch.empty_like(split.train_labels)
    train_loss: list[float] = []
    for epoch in range(config.epochs):
        order = dataloader_epoch_order(shuffle, n_train)
        torch.index_select(split.train_inputs, 0, order, out=shuffled_x)
        torch.index_select(split.train_labels, 0, order, out=shuffled_y)
        loss_sum, n_batches = 0.0, 0
        for start in range(0, n_train, config.batch_size):
            stop = start + config.batch_size
            loss_sum += trainer.step(shuffled_x[start:stop], shuffled_y[start:stop])
            n_batches += 1
        train_loss.append(loss_sum / n_batches)
        if not math.isfinite(train_loss[-1]):
            raise FloatingPointError(f"train loss became non-finite ({train_loss[-1]}) in epoch {epoch} "
                                     f"(lr={config.lr}, hidden_width={config.hidden_width})")
    trainer.write_back()
    return model, train_loss


def run_trial(config: PoisonSensitivityConfig) -> TrialResult:
    """Train one MLP on the poisoned split and measure it."""
    split = make_split(config)
    model, train_loss = train(config, split)
    train_acc = accuracy(model, split.train_inputs, split.train_labels)
    test_acc = accuracy(model, split.test_inputs, split.test_labels)
    result = TrialResult(
        metrics={
            "train_acc": train_acc,
            "train_clean_acc": accuracy(model, split.train_inputs, split.train_clean_labels),
            "test_acc": test_acc,
            "gen_gap": train_acc - test_acc,
            "final_train_loss": train_loss[-1],
        },
        histories={"train_loss": train_loss},
    )
    result.check_finite()
    return result
