"""Study ``adversarial_scaling``: FGSM/PGD robustness of 2-hidden-layer MLPs vs width.

A point = one (dataset, hidden_width, seed): generate the data,
train one MLP with Adam and early stopping, then attack the test set with
FGSM and PGD at every epsilon of the config (one training, many attacks).
Protocol: ``docs/adversarial_scaling.md``.

Randomness, all from ``config.seed``: the data come from NumPy
``default_rng(seed)``; the weights from ``torch.manual_seed(seed)`` (inside a
forked global RNG, so the caller's RNG state is left alone); the shuffling
from a ``torch.Generator`` seeded with ``seed`` that is consumed per epoch
exactly as a ``DataLoader(shuffle=True, generator=g)`` consumes it
(``core.training.dataloader_epoch_order``).  The
reference code shares one loader across the widths of a seed; here each
point has its own, so only the first width of a seed (16 in the grid) sees
the reference's shuffling order bit for bit.

Histories: ``train_loss`` is indexed by epoch (0-based); ``fgsm_acc``,
``pgd_acc``, ``fgsm_gap``, ``pgd_gap`` by epsilon index (the order of
``config.epsilons``).  The robust accuracies are also final metrics named by
their epsilon, ``fgsm_acc/eps_0.05`` and ``pgd_acc/eps_0.05`` (the MLflow UI
groups each attack's in one section, one chart per epsilon), and histories
``fgsm_acc_by_eps_x1000``, ``pgd_acc_by_eps_x1000`` at ``step = round(1000 * epsilon)``
(the UI's line charts then run over epsilon itself, in thousandths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core import synthetic
from core.point import PointContext, PointResult, TrainedModel, generated
from core.validation import Int, OneOf, Real, Reals, check_fields

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch (large and slow to import) is imported by the functions that compute: the launcher builds and checks configs only

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

    RULES = {"dataset": OneOf(*sorted(DATASETS)), "hidden_width": Int(1), "seed": Int(0), "n_samples": Int(2),
             "noise": Real(0.0), "train_fraction": Real(0.0, low_open=True), "lr": Real(0.0, low_open=True),
             "batch_size": Int(1), "max_epochs": Int(1), "patience": Int(1), "min_delta": Real(0.0),
             "epsilons": Reals(0.0), "pgd_steps": Int(1), "pgd_step_fraction": Real(0.0, low_open=True),
             "torch_threads": Int(1)}

    def __post_init__(self) -> None:
        check_fields(self, coerce=True)
        if not 1 <= self.n_train <= self.n_samples - 1:
            raise ValueError(
                f"train_fraction must leave at least one train and one test sample of "
                f"n_samples={self.n_samples}, got {self.train_fraction}"
            )

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
    import torch

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
    from core.training import seeded_mlp

    return seeded_mlp(2, (config.hidden_width,) * 2, 2, config.seed)


def train(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, config: AdversarialScalingConfig) -> list[float]:
    """Train ``model`` in place with Adam and early stopping (:func:`core.fast_mlp.fit_mlp`); the epoch losses."""
    from core.fast_mlp import fit_mlp

    return fit_mlp(model, x_train, y_train, optimizer="adam", lr=config.lr, epochs=config.max_epochs,
                   batch_size=config.batch_size, shuffle_seed=config.seed, patience=config.patience,
                   min_delta=config.min_delta)


def robustness_csv(epsilons, fgsm_acc, pgd_acc, fgsm_gap, pgd_gap) -> str:
    """The per-epsilon table as CSV text (header ``epsilon,fgsm_acc,pgd_acc,fgsm_gap,pgd_gap``)."""
    lines = ["epsilon,fgsm_acc,pgd_acc,fgsm_gap,pgd_gap"]
    for row in zip(epsilons, fgsm_acc, pgd_acc, fgsm_gap, pgd_gap):
        lines.append(",".join(repr(float(value)) for value in row))
    return "\n".join(lines) + "\n"


def run_point(config: AdversarialScalingConfig, context: PointContext) -> PointResult:
    """Train one MLP on the config's data set (``config.torch_threads`` threads) and attack it at every epsilon."""
    from core.training import torch_threads

    with torch_threads(config.torch_threads):
        return _run(config)


def _run(config: AdversarialScalingConfig) -> PointResult:
    from core.attacks import fgsm, pgd
    from core.models import count_parameters
    from core.training import accuracy, predict

    x_train, y_train, x_test, y_test = make_data(config)
    model = build_seeded_model(config)
    losses = train(model, x_train, y_train, config)

    model.eval()
    clean = accuracy(predict(model, x_test), y_test)
    fgsm_acc, pgd_acc = [], []
    for eps in config.epsilons:
        fgsm_acc.append(accuracy(predict(model, fgsm(model, x_test, y_test, eps)), y_test))
        adv = pgd(model, x_test, y_test, eps, steps=config.pgd_steps, step_size=config.pgd_step_fraction * eps)
        pgd_acc.append(accuracy(predict(model, adv), y_test))
    fgsm_gap = [clean - acc for acc in fgsm_acc]
    pgd_gap = [clean - acc for acc in pgd_acc]

    return PointResult(
        metrics={
            "clean_acc": clean,
            "epochs_trained": float(len(losses)),
            "final_train_loss": losses[-1],
            "mean_fgsm_gap": float(np.mean(fgsm_gap)),
            "mean_pgd_gap": float(np.mean(pgd_gap)),
            **{f"{attack}_acc/eps_{eps:g}": acc for attack, accs in (("fgsm", fgsm_acc), ("pgd", pgd_acc))
               for eps, acc in zip(config.epsilons, accs)},
        },
        histories={
            "train_loss": losses,
            "fgsm_acc": fgsm_acc,
            "pgd_acc": pgd_acc,
            "fgsm_gap": fgsm_gap,
            "pgd_gap": pgd_gap,
            # The same accuracies with step = 1000 x epsilon: a line over epsilon itself in the MLflow UI's charts.
            "fgsm_acc_by_eps_x1000": {round(1000 * eps): acc for eps, acc in zip(config.epsilons, fgsm_acc)},
            "pgd_acc_by_eps_x1000": {round(1000 * eps): acc for eps, acc in zip(config.epsilons, pgd_acc)},
        },
        params={"param_count": count_parameters(model)},
        artifacts={"robustness.csv": robustness_csv(config.epsilons, fgsm_acc, pgd_acc, fgsm_gap, pgd_gap)},
        model=TrainedModel("mlp", {"in_features": 2, "hidden_widths": [config.hidden_width] * 2, "num_classes": 2},
                           model, x_test[:2]),
        datasets=(generated(config.dataset, f"core.synthetic.{config.dataset}", n_samples=config.n_samples,
                            noise=config.noise, seed=config.seed),),
    )
