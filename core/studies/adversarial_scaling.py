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
from core.training import accuracy, dataloader_epoch_order
from core.trial import TrialResult

aten = torch.ops.aten

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


class _FastAdamMLP:
    """Cross-entropy + Adam steps for ``Sequential(Linear, ReLU, ..., Linear)``, without autograd.

    Speed only.  Each step calls, in order, the ATen kernels that
    ``F.cross_entropy(model(x), y).backward()`` and ``torch.optim.Adam``
    (default betas/eps, single-tensor path) call for this model -- addmm,
    relu, log_softmax, nll_loss and their backward kernels, ``mm`` for the
    weight and input gradients, ``sum`` for the bias gradients, then Adam's
    lerp / mul / addcmul / sqrt / div / add / addcdiv -- but writes into
    buffers allocated once (no allocations, hence no page faults on fresh
    memory, in the steady state) and runs Adam once on a flat vector of all
    parameters instead of once per tensor.

    With one thread the result is bit-identical to the autograd loop
    (``tests/test_adversarial_core.py`` checks it against a ``DataLoader``
    loop).  The flat Adam relies on every parameter tensor starting on a
    16-element boundary (two AVX2 vectors) so the elementwise kernels
    vectorise the same elements as per tensor; that holds when the hidden
    widths are multiples of 16 (the whole grid).  For other widths a few elements may take a
    scalar path instead, which can change their last bit.
    """

    def __init__(self, model: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        layers = list(model) if isinstance(model, nn.Sequential) else []
        linears = layers[0::2]
        if not (
            linears
            and len(layers) % 2 == 1
            and all(isinstance(m, nn.Linear) and m.bias is not None for m in linears)
            and all(isinstance(m, nn.ReLU) for m in layers[1::2])
        ):
            raise ValueError("_FastAdamMLP needs Sequential(Linear, ReLU, ..., Linear) with biases")
        self._model_params = [p for m in linears for p in (m.weight, m.bias)]
        total = sum(p.numel() for p in self._model_params)
        dtype = self._model_params[0].dtype
        self.flat = torch.empty(total, dtype=dtype)
        self.flat_grad = torch.empty(total, dtype=dtype)
        views, grad_views, offset = [], [], 0
        for p in self._model_params:
            k = p.numel()
            self.flat[offset : offset + k].copy_(p.detach().reshape(-1))
            views.append(self.flat[offset : offset + k].view_as(p))
            grad_views.append(self.flat_grad[offset : offset + k].view_as(p))
            offset += k
        self._views = views
        self.weights, self.biases = views[0::2], views[1::2]
        self.weight_grads = grad_views[0::2]
        self.bias_grads = [g.view(1, -1) for g in grad_views[1::2]]  # sum(..., keepdim=True) shape
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.denom = torch.empty_like(self.flat)
        self.lr, self.beta1, self.beta2, self.eps = lr, betas[0], betas[1], eps
        self.steps = 0
        self._one = torch.ones((), dtype=dtype)
        self._buffers: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}

    def _batch_buffers(self, n: int):
        if n not in self._buffers:
            widths = [len(b) for b in self.biases]
            self._buffers[n] = (
                [self.flat.new_empty(n, w) for w in widths],  # layer outputs (after ReLU for hidden layers)
                [self.flat.new_empty(n, w) for w in widths],  # loss gradients w.r.t. the pre-activations
                self.flat.new_empty(n, widths[-1]),  # log-probabilities
                self.flat.new_empty(n, widths[-1]),  # loss gradient w.r.t. the log-probabilities
            )
        return self._buffers[n]

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One Adam step on the batch; returns its mean cross-entropy (before the step)."""
        outputs, grads, log_probs, grad_log_probs = self._batch_buffers(len(x))
        last = len(self.weights) - 1
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            torch.addmm(b, h, w.t(), out=outputs[i])  # = F.linear
            if i < last:
                outputs[i].relu_()
            h = outputs[i]
        torch._log_softmax(outputs[last], 1, False, out=log_probs)
        loss, total_weight = aten.nll_loss_forward(log_probs, y, None, 1, -100)  # mean reduction
        aten.nll_loss_backward.grad_input(self._one, log_probs, y, None, 1, -100, total_weight, grad_input=grad_log_probs)
        aten._log_softmax_backward_data.out(grad_log_probs, log_probs, 1, log_probs.dtype, out=grads[last])
        for i in range(last, -1, -1):
            torch.sum(grads[i], (0,), keepdim=True, out=self.bias_grads[i])
            torch.mm(grads[i].t(), x if i == 0 else outputs[i - 1], out=self.weight_grads[i])
            if i > 0:
                torch.mm(grads[i], self.weights[i], out=grads[i - 1])
                aten.threshold_backward.grad_input(grads[i - 1], outputs[i - 1], 0, grad_input=grads[i - 1])

        self.steps += 1
        step_size = self.lr / (1 - self.beta1**self.steps)
        bias_correction2_sqrt = (1 - self.beta2**self.steps) ** 0.5
        grad = self.flat_grad
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        torch.sqrt(self.exp_avg_sq, out=self.denom)
        self.denom.div_(bias_correction2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, self.denom, value=-step_size)
        return loss.item()

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained values into the model's parameters."""
        for param, value in zip(self._model_params, self._views):
            param.copy_(value)


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
    trainer = _FastAdamMLP(model, config.lr)
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
