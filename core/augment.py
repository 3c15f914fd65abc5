"""Batched, device-side input pipeline for a data set held as one uint8 tensor.

The whole data set lives on the training device as ``N x C x H x W`` uint8.
A training batch is gathered from it with random crop (reflect padding) and
horizontal flip folded into per-image row/column indices, then normalized.
All randomness comes from one seeded ``torch.Generator`` on that device, so a
run is reproducible and resumable from the generator's state.  No per-image
Python, no DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in ``[-size + 1, 2 * size - 2]`` into ``[0, size)`` as reflect padding does (edge not repeated)."""
    index = index.abs()
    return (size - 1) - ((size - 1) - index).abs()


def random_crop_flip(
    images: torch.Tensor,
    indices: torch.Tensor,
    padding: int,
    horizontal_flip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """``images[indices]`` randomly cropped back to ``H x W`` from a reflect-padded copy, then flipped with p = 0.5.

    Draws, in order: top offsets, left offsets (each uniform in
    ``[0, 2 * padding]``), then flip coins.  The padded copy is never built:
    each output row/column reads its reflected source index (two gathers).
    Returns uint8 ``B x C x H x W``.
    """
    _, channels, height, width = images.shape
    if padding >= min(height, width):
        raise ValueError(f"padding {padding} must be smaller than the image side {min(height, width)}")
    device = images.device
    batch = images[indices]
    size = len(indices)
    if padding > 0:
        top = torch.randint(0, 2 * padding + 1, (size, 1), generator=generator, device=device)
        left = torch.randint(0, 2 * padding + 1, (size, 1), generator=generator, device=device)
        rows = _reflect(torch.arange(height, device=device) + top - padding, height)
        batch = batch.gather(2, rows[:, None, :, None].expand(size, channels, height, width))
        cols = _reflect(torch.arange(width, device=device) + left - padding, width)
    else:
        cols = torch.arange(width, device=device).expand(size, width)
    if horizontal_flip:
        flip = torch.rand(size, 1, generator=generator, device=device) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    if padding > 0 or horizontal_flip:
        batch = batch.gather(3, cols[:, None, None, :].expand(size, channels, height, width))
    return batch


class Normalize:
    """uint8 -> float32 ``(x / 255 - mean) / std`` per channel, on the given device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> None:
        self.scaled_mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.scaled_std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.scaled_mean) / self.scaled_std


class DeviceAugmenter:
    """Train transform (crop + flip + normalize) and test transform (normalize) over a device-resident uint8 set."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int,
        horizontal_flip: bool,
        device: torch.device | str,
    ) -> None:
        self.normalize = Normalize(mean, std, device)
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip

    def train_batch(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented, normalized float32 batch of ``images[indices]``."""
        batch = random_crop_flip(images, indices, self.crop_padding, self.horizontal_flip, generator)
        return self.normalize(batch)

    def test_batch(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Normalized float32 batch of ``images[indices]``."""
        return self.normalize(images[indices])
