"""Study ``adversarial_scaling``: FGSM/PGD robustness of 2-hidden-layer MLPs vs width.

One trial = one (dataset, hidden_width, seed) grid point: generate the data,
train one MLP with Adam and early stopping, then attack the test set with
FGSM and PGD at every epsilon of the config (one training, many attacks).
Protocol: ``/work/shared/specs/adversarial_scaling.md``.

Randomness, all from ``config.seed``: the data come from NumPy
``default_rng(seed)``; the weights from ``torch.manual_seed(seed)`` (inside a
forked global RNG, so the caller's RNG state is left alone); the shuffling
from a ``torch.Generator`` seeded with ``seed`` that is consumed per epoch
exactly as a ``DataLoader(shuffle=True, generator=g)`` consumes it
(``core.training.dataloader_epoch_order``).  The
reference code shares one loader across the widths of a seed; here each
trial has its own, so only the first width of a seed (16 in the grid) sees
the reference's shuffling order bit for bit.

Histories: ``train_loss`` is indexed by epoch (0-based); ``fgsm_acc``,
``pgd_acc``, ``fgsm_gap``, ``pgd_gap`` by epsilon index (the order of
``config.epsilons``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core import synthetic
from core.attacks import fgsm, pgd
from core.models import build_model, count_parameters
from core.training import FastMLPAdam, accuracy, dataloader_epoch_order
from core.trial import TrialResult

DATASETS = {"circles": synthetic.circles, "moons": synthetic.moons}


@dataclass(frozen=True)
class AdversarialScalingConfig:
    """One grid point of the study; defaults are the spec's protocol."""

    dataset: str
    hidden_width: int
    seed: int
    n_samples: int = 2000
    noise: float = 0.15
    train_fraction: float = 0.8
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 2000
    patience: int = 50
    min_delta: float = 1e-5
    epsilons: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)
    pgd_steps: int = 10
    pgd_step_fraction: float = 0.25  # PGD step size = pgd_step_fraction * epsilon
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        self._integer("hidden_width", minimum=1)
        self._integer("seed", minimum=0)
        self._integer("n_samples", minimum=2)
        self._integer("batch_size", minimum=1)
        self._integer("max_epochs", minimum=1)
        self._integer("patience", minimum=1)
        self._integer("pgd_steps", minimum=1)
        self._integer("torch_threads", minimum=1)
        self._real("noise", lower=0.0)
        self._real("lr", lower=0.0, strict=True)
        self._real("min_delta", lower=0.0)
        self._real("pgd_step_fraction", lower=0.0, strict=True)
        self._real("train_fraction", lower=0.0, strict=True)
        if not 1 <= self.n_train <= self.n_samples - 1:
            raise ValueError(
                f"train_fraction must leave at least one train and one test sample of "
                f"n_samples={self.n_samples}, got {self.train_fraction}"
            )
        epsilons = self.epsilons
        if isinstance(epsilons, (str, bytes)) or not hasattr(epsilons, "__iter__"):
            raise ValueError(f"epsilons must be a sequence of numbers, got {epsilons!r}")
        epsilons = tuple(epsilons)
        if not epsilons:
            raise ValueError("epsilons must name at least one value, got ()")
        for eps in epsilons:
            if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
                raise ValueError(f"epsilons must be finite numbers, got {eps!r}")
            if eps < 0:
                raise ValueError(f"epsilons must be non-negative, got {eps}")
        object.__setattr__(self, "epsilons", tuple(float(eps) for eps in epsilons))

    def _integer(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        object.__setattr__(self, name, int(value))

    def _real(self, name: str, lower: float, strict: bool = False) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if value < lower or (strict and value == lower):
            raise ValueError(f"{name} must be {'>' if strict else '>='} {lower}, got {value}")
        object.__setattr__(self, name, float(value))

    @property
    def n_train(self) -> int:
        """Training samples: the first ``round(n_samples * train_fraction)``; the rest are the test set."""
        return int(round(self.n_samples * self.train_fraction))

    @property
    def param_count(self) -> int:
        """Trainable parameters of the 2 -> h -> h -> 2 MLP: ``h^2 + 6h + 2``."""
        h = self.hidden_width
        return h * h + 6 * h + 2


def make_data(config: AdversarialScalingConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: float32 points, int64 labels, split in generated order."""
    x, y = DATASETS[config.dataset](config.n_samples, config.noise, config.seed)
    n_train = config.n_train
    return (
        torch.from_numpy(np.ascontiguousarray(x[:n_train])),
        torch.from_numpy(np.ascontiguousarray(y[:n_train])),
        torch.from_numpy(np.ascontiguousarray(x[n_train:])),
        torch.from_numpy(np.ascontiguousarray(y[n_train:])),
    )


def build_seeded_model(config: AdversarialScalingConfig) -> nn.Module:
    """The 2 -> h -> ReLU -> h -> ReLU -> 2 MLP initialised right after ``torch.manual_seed(seed)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model("mlp", in_features=2, hidden_widths=(config.hidden_width,) * 2, num_classes=2)


def train(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: AdversarialScalingConfig,
) -> list[float]:
    """Train ``model`` in place; returns the epoch-mean training loss per epoch.

    Adam (``lr``, default betas/eps) on the mean cross-entropy.  Each epoch
    visits the shuffled training set in consecutive batches of
    ``batch_size`` (the last one smaller); the epoch loss is the unweighted
    mean of the batch losses.  Training stops once the epoch loss has not
    fallen more than ``min_delta`` below the best so far for ``patience``
    consecutive epochs.
    """
    generator = torch.Generator().manual_seed(config.seed)
    trainer = FastMLPAdam(model, config.lr)
    n, batch = len(x_train), config.batch_size
    bounds = [(start, min(start + batch, n)) for start in range(0, n, batch)]
    shuffled_x = torch.empty_like(x_train)
    shuffled_y = torch.empty_like(y_train)

    losses: list[float] = []
    best = math.inf
    stale = 0
    for _ in range(config.max_epochs):
        order = dataloader_epoch_order(generator, n)
        torch.index_select(x_train, 0, order, out=shuffled_x)
        torch.index_select(y_train, 0, order, out=shuffled_y)
        total = 0.0
        for start, stop in bounds:
            total += trainer.step(shuffled_x[start:stop], shuffled_y[start:stop])
        epoch_loss = total / len(bounds)
        losses.append(epoch_loss)
        if epoch_loss < best - config.min_delta:
            best = epoch_loss
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    trainer.write_back()
    return losses


def robustness_csv(epsilons, fgsm_acc, pgd_acc, fgsm_gap, pgd_gap) -> str:
    """The per-epsilon table as CSV text (header ``epsilon,fgsm_acc,pgd_acc,fgsm_gap,pgd_gap``)."""
    lines = ["epsilon,fgsm_acc,pgd_acc,fgsm_gap,pgd_gap"]
    for row in zip(epsilons, fgsm_acc, pgd_acc, fgsm_gap, pgd_gap):
        lines.append(",".join(repr(float(value)) for value in row))
    return "\n".join(lines) + "\n"


def run_trial(config: AdversarialScalingConfig) -> TrialResult:
    """Train one MLP on the config's data set and attack it at every epsilon."""
    x_train, y_train, x_test, y_test = make_data(config)
    model = build_seeded_model(config)
    losses = train(model, x_train, y_train, config)

    model.eval()
    clean = accuracy(model, x_test, y_test)
    fgsm_acc, pgd_acc = [], []
    for eps in config.epsilons:
        fgsm_acc.append(accuracy(model, fgsm(model, x_test, y_test, eps), y_test))
        adv = pgd(model, x_test, y_test, eps, steps=config.pgd_steps, step_size=config.pgd_step_fraction * eps)
        pgd_acc.append(accuracy(model, adv, y_test))
    fgsm_gap = [clean - acc for acc in fgsm_acc]
    pgd_gap = [clean - acc for acc in pgd_acc]

    result = TrialResult(
        metrics={
            "clean_acc": clean,
            "epochs_trained": float(len(losses)),
            "final_train_loss": losses[-1],
            "mean_fgsm_gap": float(np.mean(fgsm_gap)),
            "mean_pgd_gap": float(np.mean(pgd_gap)),
        },
        histories={
            "train_loss": losses,
            "fgsm_acc": fgsm_acc,
            "pgd_acc": pgd_acc,
            "fgsm_gap": fgsm_gap,
            "pgd_gap": pgd_gap,
        },
        params={"param_count": count_parameters(model)},
        artifacts={"robustness.csv": robustness_csv(config.epsilons, fgsm_acc, pgd_acc, fgsm_gap, pgd_gap)},
    )
    result.check_finite()
    return result
