"""Fully connected ReLU networks for the synthetic studies."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from core.models import register_model


@register_model("mlp")
def mlp(in_features: int, hidden_widths: Sequence[int], num_classes: int) -> nn.Sequential:
    """``Linear - ReLU`` per hidden width, then a linear head (PyTorch default init)."""
    if not hidden_widths:
        raise ValueError("hidden_widths must name at least one hidden layer")
    layers: list[nn.Module] = []
    width_in = in_features
    for width in hidden_widths:
        if width < 1:
            raise ValueError(f"hidden width must be >= 1, got {width}")
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        width_in = width
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)
