"""FGSM / PGD on hand-checkable models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.attacks import fgsm, pgd
from core.models import build_model
from core.training import torch_threads


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread, as the runner gives each trial: fast on a busy 2-core box, and reproducible."""
    with torch_threads(1):
        yield


# Two-class linear model with logits z_k = w_k . x.  For label y the CE gradient
# w.r.t. x is p_other * (w_other - w_y) with p_other > 0, so the loss-increasing
# sign direction is sign(w_other - w_y): w1 - w0 = (2, -3), hence (+, -) for
# label 0 and (-, +) for label 1.
W = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
DIRECTION = {0: torch.tensor([1.0, -1.0]), 1: torch.tensor([-1.0, 1.0])}


def linear_model() -> nn.Linear:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(W)
    return model


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", in_features=2, hidden_widths=(16, 16), num_classes=2)


def points(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_fgsm_on_linear_model_moves_eps_along_the_hand_derived_sign():
    model = linear_model()
    x, y = points()
    eps = 0.1
    adv = fgsm(model, x, y, eps)
    expected = x + eps * torch.stack([DIRECTION[int(label)] for label in y])
    assert torch.equal(adv, expected)
    assert bool((per_sample_loss(model, adv, y) > per_sample_loss(model, x, y)).all())


def test_pgd_on_linear_model_reaches_the_fgsm_corner():
    # With a constant gradient sign, 4 steps of eps/4 reach the ball's corner and
    # the projection keeps PGD there: the L-inf maximiser, i.e. the FGSM point.
    model = linear_model()
    x, y = points()
    eps = 0.2
    adv = pgd(model, x, y, eps, steps=10)
    assert torch.allclose(adv, fgsm(model, x, y, eps), atol=1e-6)


def test_pgd_stays_in_the_eps_ball_and_in_clamp():
    model = small_mlp()
    x, y = points(256)
    eps = 0.3
    for kwargs in ({}, {"step_size": 0.2, "steps": 15}, {"random_start": True, "generator": torch.Generator().manual_seed(3)}):
        adv = pgd(model, x, y, eps, **kwargs)
        assert (adv - x).abs().max().item() <= eps + 1e-6
        assert not torch.equal(adv, x)
    clamped = pgd(model, x, y, eps, step_size=0.2, clamp=(-0.5, 0.5))
    assert clamped.min().item() >= -0.5 and clamped.max().item() <= 0.5
    assert (clamped - x.clamp(-0.5, 0.5)).abs().max().item() <= eps + 1e-6
    clamped_fgsm = fgsm(model, x, y, eps, clamp=(-0.5, 0.5))
    assert clamped_fgsm.min().item() >= -0.5 and clamped_fgsm.max().item() <= 0.5


def test_pgd_loss_at_least_fgsm_loss_on_fixed_mlp():
    model = small_mlp()
    x, y = points(256)
    eps = 0.5
    clean = per_sample_loss(model, x, y)
    fgsm_loss = per_sample_loss(model, fgsm(model, x, y, eps), y)
    pgd_loss = per_sample_loss(model, pgd(model, x, y, eps, steps=20), y)
    assert fgsm_loss.mean() > clean.mean()
    assert pgd_loss.mean() >= fgsm_loss.mean()
    # where the model is affine on the whole ball, PGD lands on the FGSM corner:
    # allow only a negligible number of samples where FGSM beats PGD
    assert (pgd_loss < fgsm_loss - 1e-4).float().mean().item() <= 0.05


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_zero_eps_changes_nothing(attack):
    model = small_mlp()
    x, y = points()
    adv = attack(model, x, y, 0.0)
    assert torch.equal(adv, x)
    assert adv is not x and not adv.requires_grad


@pytest.mark.parametrize("attack", [fgsm, pgd])
@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_eps_raises_naming_the_value(attack, bad):
    model = small_mlp()
    x, y = points()
    with pytest.raises(ValueError, match=rf"eps.*{bad}"):
        attack(model, x, y, bad)


def test_bad_pgd_arguments_raise():
    model = small_mlp()
    x, y = points()
    with pytest.raises(ValueError, match="steps.*0"):
        pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="step_size.*-1"):
        pgd(model, x, y, 0.1, step_size=-1.0)
    with pytest.raises(ValueError, match="clamp"):
        fgsm(model, x, y, 0.1, clamp=(1.0, 0.0))


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_attack_leaves_mode_and_parameter_grads_alone(attack):
    model = small_mlp()
    model.train()
    model[1].eval()  # a mixed state must come back exactly as it was
    modes = [m.training for m in model.modules()]
    x, y = points()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 7.0)
    adv = attack(model, x, y, 0.1)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(params[0].grad, torch.full_like(params[0], 7.0))
    assert all(p.grad is None for p in params[1:])
    assert not adv.requires_grad and adv.grad_fn is None


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_attacks_work_inside_no_grad_contexts(context):
    model = small_mlp()
    x, y = points()
    expected_fgsm, expected_pgd = fgsm(model, x, y, 0.1), pgd(model, x, y, 0.1)
    with context():
        assert torch.equal(fgsm(model, x, y, 0.1), expected_fgsm)
        assert torch.equal(pgd(model, x, y, 0.1), expected_pgd)

