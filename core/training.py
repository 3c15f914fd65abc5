"""Small training utilities shared by the studies' protocols."""

from __future__ import annotations

import torch
from torch import nn


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


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``inputs`` whose arg-max logit equals ``labels`` (model put in eval mode for the call)."""
    was_training = model.training
    model.eval()
    try:
        correct = (model(inputs).argmax(dim=1) == labels).sum().item()
    finally:
        model.train(was_training)
    return correct / len(labels)


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
