"""L-infinity evasion attacks (FGSM, PGD) on any classifier that returns logits.

Every function works on a whole batch at once and leaves the model as it
found it: the attack runs in eval mode (each submodule's train/eval flag is
restored afterwards) and only input gradients are computed, so parameter
``.grad`` fields are untouched.  The attacked loss is the batch-mean
cross-entropy; the mean only rescales each sample's gradient, and the attack
uses its sign.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _check_eps(eps: float) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}") from None
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def _check_clamp(clamp: tuple[float, float] | None) -> tuple[float, float] | None:
    if clamp is None:
        return None
    lo, hi = clamp
    if not lo <= hi:
        raise ValueError(f"clamp must be a (lo, hi) pair with lo <= hi, got {clamp!r}")
    return float(lo), float(hi)


def _input_grad(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the batch-mean cross-entropy w.r.t. ``inputs`` only."""
    x = inputs.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Fast gradient sign method: ``inputs + eps * sign(grad_x CE)``, then ``clamp``.

    Returns a new detached tensor; ``eps == 0`` gives an unchanged copy.
    """
    eps = _check_eps(eps)
    bounds = _check_clamp(clamp)
    with torch.inference_mode(False):
        clean = inputs.detach().clone()  # a normal tensor even if inputs is an inference tensor
        if eps == 0.0:
            return clean
        with torch.enable_grad(), _eval_mode(model):
            adv = clean + eps * _input_grad(model, clean, labels).sign()
        if bounds is not None:
            adv = adv.clamp(*bounds)
    return adv


def pgd(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    clamp: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent in the L-inf ``eps``-ball around ``inputs``.

    Each of ``steps`` iterations adds ``step_size * sign(grad_x CE)``
    (``step_size`` defaults to ``eps / 4``; ignored when ``eps == 0``), projects back onto the ball
    (``x0 + clip(x - x0, -eps, eps)``), then onto ``clamp`` if given.
    ``random_start`` begins from a uniform point of the ball drawn with
    ``generator``.  Returns a new detached tensor; ``eps == 0`` gives an
    unchanged copy.
    """
    eps = _check_eps(eps)
    bounds = _check_clamp(clamp)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    with torch.inference_mode(False):
        clean = inputs.detach().clone()
        if eps == 0.0:
            return clean
        if step_size is None:
            step_size = eps / 4.0
        elif not (math.isfinite(step_size) and step_size > 0.0):
            raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
        adv = clean
        if random_start:
            noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
            adv = clean + (2.0 * noise - 1.0) * eps
            if bounds is not None:
                adv = adv.clamp(*bounds)
        with torch.enable_grad(), _eval_mode(model):
            for _ in range(int(steps)):
                adv = adv + step_size * _input_grad(model, adv, labels).sign()
                adv = clean + (adv - clean).clamp(-eps, eps)
                if bounds is not None:
                    adv = adv.clamp(*bounds)
    return adv

