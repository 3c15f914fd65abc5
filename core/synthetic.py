"""Synthetic data sets, generated with NumPy exactly as the studies' protocols state."""

from __future__ import annotations

import numpy as np


def gaussian_clusters(
    n_samples: int, n_features: int, n_classes: int, cluster_std: float, center_scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: ``(X float64 (n, d), y int64 (n,))``.

    With ``RandomState(seed)``: centers ``randn(K, d) * center_scale``; class c
    gets ``n // K`` samples (the remainder goes to the first classes) drawn as
    ``randn(n_c, d) * cluster_std + center_c``; then one shuffle permutation.
    """
    rng = np.random.RandomState(seed)
    centers = rng.randn(n_classes, n_features) * center_scale
    base, remainder = divmod(n_samples, n_classes)
    features, labels = [], []
    for c in range(n_classes):
        n_c = base + (1 if c < remainder else 0)
        features.append(rng.randn(n_c, n_features) * cluster_std + centers[c])
        labels.append(np.full(n_c, c, dtype=np.int64))
    X = np.concatenate(features)
    y = np.concatenate(labels)
    order = rng.permutation(n_samples)
    return X[order], y[order]


def _check_two_class_args(n_samples: int, noise: float) -> None:
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    if not (noise >= 0.0 and np.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")


def _noise_and_shuffle(
    rng: np.random.Generator, points: np.ndarray, n_first: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Label the first ``n_first`` rows 0 and the rest 1, add noise, shuffle, cast."""
    n_samples = len(points)
    labels = np.concatenate([np.zeros(n_first, dtype=np.int64), np.ones(n_samples - n_first, dtype=np.int64)])
    points = points + rng.normal(0.0, noise, points.shape)
    order = rng.permutation(n_samples)
    return points[order].astype(np.float32), labels[order]


def circles(n_samples: int, noise: float, seed: int, factor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric noisy circles: ``(X float32 (n, 2), y int64 (n,))``.

    With ``default_rng(seed)``: ``n // 2`` angles ``uniform(0, 2pi)`` put class 0
    on the unit circle, then ``n - n // 2`` more angles put class 1 on the
    circle of radius ``factor``; then ``normal(0, noise)`` on every coordinate
    and one shuffle permutation, both from the same generator.
    """
    _check_two_class_args(n_samples, noise)
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    rng = np.random.default_rng(seed)
    n_outer = n_samples // 2
    outer = rng.uniform(0.0, 2.0 * np.pi, n_outer)
    inner = rng.uniform(0.0, 2.0 * np.pi, n_samples - n_outer)
    points = np.vstack(
        [
            np.column_stack([np.cos(outer), np.sin(outer)]),
            factor * np.column_stack([np.cos(inner), np.sin(inner)]),
        ]
    )
    return _noise_and_shuffle(rng, points, n_outer, noise)


def moons(n_samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving noisy half circles: ``(X float32 (n, 2), y int64 (n,))``.

    Class 0 (``n // 2`` points): ``(cos t, sin t)`` for ``t = linspace(0, pi)``;
    class 1 (the rest): ``(1 - cos t, 1 - sin t - 0.5)``.  Then, with
    ``default_rng(seed)``, ``normal(0, noise)`` on every coordinate and one
    shuffle permutation.
    """
    _check_two_class_args(n_samples, noise)
    rng = np.random.default_rng(seed)
    n_upper = n_samples // 2
    t_upper = np.linspace(0.0, np.pi, n_upper)
    t_lower = np.linspace(0.0, np.pi, n_samples - n_upper)
    points = np.vstack(
        [
            np.column_stack([np.cos(t_upper), np.sin(t_upper)]),
            np.column_stack([1.0 - np.cos(t_lower), 1.0 - np.sin(t_lower) - 0.5]),
        ]
    )
    return _noise_and_shuffle(rng, points, n_upper, noise)
