"""Training pieces the studies' protocols share: device choice, data order, accuracy, thread limits, seeded MLPs.

The bit-exact fast MLP trainer (:func:`core.fast_mlp.fit_mlp`, :func:`core.fast_mlp.fit_mlps_sgd`) is in
:mod:`core.fast_mlp`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from core.models import build_model


def dataloader_epoch_order(generator: torch.Generator, n: int) -> torch.Tensor:
    """The sample order of one epoch of ``DataLoader(shuffle=True, generator=g)``.

    Drawing from ``generator`` exactly as the DataLoader does lets a loop index
    tensors directly and still see the same batches, without per-sample fetch
    and collate: each epoch's iterator draws one int64 base seed, then
    ``RandomSampler`` draws the order and, on exhaustion, one more
    permutation it slices to nothing.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return order


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices kept for training and held out for validation: ``round(n * fraction)`` samples drawn
    uniformly by ``numpy.random.default_rng([seed, 1])`` (a stream of its own, unlike any drawn from ``seed``)."""
    held_out = np.sort(np.random.default_rng([seed, 1]).permutation(n)[:int(round(n * fraction))])
    return np.setdiff1d(np.arange(n), held_out), held_out


def select_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` if usable, with an explicit CUDA index; None means CUDA when available, else CPU.

    Requested CUDA without a GPU falls back to CPU with a warning.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn("CUDA requested but not available; running on CPU", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
    return device


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (0.0 for none), counted exactly."""
    return int((predictions == labels).sum()) / len(labels) if len(labels) else 0.0


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Arg-max class of each input, with the model in eval mode for the call."""
    was_training = model.training
    model.eval()
    try:
        return model(inputs).argmax(dim=1)
    finally:
        model.train(was_training)


class torch_threads:
    """Context manager running its body with ``n`` intra-op threads, then restoring the old count.

    Float reductions (the batch sum in a matmul gradient, for one) depend on
    the thread count, so it is a protocol value: same config, same numbers.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"torch_threads must be >= 1, got {n}")
        self.n = n
        self.previous = torch.get_num_threads()

    def __enter__(self) -> "torch_threads":
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)


def seeded_mlp(in_features: int, hidden_widths: Sequence[int], num_classes: int, seed: int) -> nn.Sequential:
    """The registry's ``mlp``, initialised right after ``torch.manual_seed(seed)`` (the caller's RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", in_features=in_features, hidden_widths=tuple(hidden_widths),
                           num_classes=num_classes)
