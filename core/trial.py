"""The contract between the science (``core``) and the sweep machinery.

A study's trial is a pure function ``config -> TrialResult``: it takes one
fully resolved, validated protocol dataclass (one grid point) and returns
plain numbers.  It knows nothing of Ray or MLflow; ``tune_jobs`` turns the
result into an MLflow child run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass
class TrialResult:
    """What one grid point produced.

    metrics:   final scalars, e.g. ``{"test_acc": 0.9}``.
    histories: named series; element ``i`` is logged at ``step=i``
               (the epoch for training curves, the epsilon index for
               attack sweeps; the study documents which).
    params:    values derived while running (``param_count``) that belong
               beside the configured params.
    artifacts: file name -> content (``str``/``bytes`` written as is,
               anything else JSON-encoded).
    """

    metrics: dict[str, float]
    histories: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)

    def check_finite(self) -> None:
        """Raise ``FloatingPointError`` naming the first non-finite metric."""
        for name, value in self.metrics.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"metric {name!r} is not finite: {value}")


class EpochHooks(Protocol):
    """Optional per-epoch callbacks a long trial may be given.

    ``tune_jobs`` implements them with Ray Tune checkpoints and MLflow; in a
    plain loop (tests, benchmarks) the trial runs without them.
    """

    def restore(self) -> dict[str, Any] | None:
        """The state saved by the last ``epoch_end`` of an earlier attempt, or None."""

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        """Called after each epoch with that epoch's metrics; ``state()`` builds a resumable snapshot."""
