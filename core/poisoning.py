"""Label-flip poisoning: which training labels are corrupted and how."""

from __future__ import annotations

import numpy as np


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def random_label_flip(labels: np.ndarray, poison_fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Flip ``round(n * poison_fraction)`` labels, each to a uniformly drawn *other* class.

    With ``RandomState(seed)``: the indices are drawn without replacement, then
    one draw per index (in that order) picks among the ``num_classes - 1``
    wrong classes in ascending order.  Returns a new array.
    """
    _check_fraction("poison_fraction", poison_fraction)
    rng = np.random.RandomState(seed)
    poisoned = np.array(labels, dtype=np.int64, copy=True)
    n_poison = int(round(len(poisoned) * poison_fraction))
    if n_poison == 0:
        return poisoned
    for index in rng.choice(len(poisoned), size=n_poison, replace=False):
        offset = rng.randint(num_classes - 1)  # position among the wrong classes
        original = poisoned[index]
        poisoned[index] = offset if offset < original else offset + 1
    return poisoned


def next_class_flip(labels: np.ndarray, poison_rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel a seeded uniform subset of ``round(n * poison_rate)`` samples as ``(y + 1) % K``.

    Returns ``(poisoned_labels, poisoned_indices)`` with the indices sorted;
    the index set is what ``poison_fit`` is measured on.
    """
    _check_fraction("poison_rate", poison_rate)
    rng = np.random.RandomState(seed)
    poisoned = np.array(labels, dtype=np.int64, copy=True)
    n_poison = int(round(len(poisoned) * poison_rate))
    indices = np.sort(rng.choice(len(poisoned), size=n_poison, replace=False)).astype(np.int64)
    poisoned[indices] = (poisoned[indices] + 1) % num_classes
    return poisoned, indices
