"""The contract between the science (``core``) and the sweep machinery.

Words: a grid *point* is one fully resolved config; a Ray *trial* computes one
or more points; each point becomes one MLflow *run*.  A study computes a point
with a pure function ``run_point(config, context) -> PointResult``: plain
numbers out, nothing of Ray or MLflow in; ``tune_jobs`` turns the result into
the point's run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass
class PointResult:
    """What one grid point produced.

    metrics:   final scalars, e.g. ``{"test_acc": 0.9}``.
    histories: named series; element ``i`` of a list is logged at ``step=i``
               (the epoch for training curves, the epsilon index for
               attack sweeps; the study documents which), a ``{step: value}``
               mapping at its own steps.
    params:    values derived while running (``param_count``) that belong
               beside the configured params.
    artifacts: file name -> content (``str``/``bytes`` written as is,
               anything else JSON-encoded).
    model:     the trained model, for the point's run to keep (see
               :class:`TrainedModel`), or None.
    datasets:  the data the point used (see :class:`DataRecord`).
    """

    metrics: dict[str, float]
    histories: dict[str, list[float] | dict[int, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    model: TrainedModel | None = field(default=None, compare=False)  # results compare by their numbers
    datasets: tuple[DataRecord, ...] = field(default=(), compare=False)

    def check_finite(self) -> None:
        """Raise ``FloatingPointError`` naming the first non-finite metric."""
        for name, value in self.metrics.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"metric {name!r} is not finite: {value}")

    def check_declared(self, declared: tuple[str, ...]) -> None:
        """Raise ``KeyError`` naming every declared metric this result lacks."""
        missing = [name for name in declared if name not in self.metrics]
        if missing:
            raise KeyError(f"the point's result lacks declared metric(s) {', '.join(map(repr, missing))}; "
                           f"it has {', '.join(map(repr, self.metrics)) or 'none'}")


@dataclass(frozen=True)
class DataRecord:
    """A data set a point used, identified by a digest (the point's run keeps it as an MLflow dataset input).

    name:        the data set (``gaussian_clusters``, ``cifar10``, ...).
    digest:      16 hex digits of SHA-256 over what identifies the data: a generator's
                 parameters, or the checksums of the files read (see :func:`generated`, :func:`from_files`).
    source_type: ``"code"`` (generated or bundled) or ``"local"`` (files read from a folder).
    source:      where it came from: the generator's name or the folder.
    profile:     the identifying values themselves (parameters, or file name -> ``sha256:...``).
    context:     the data's role in the point (``"training"``).
    """

    name: str
    digest: str
    source_type: str
    source: str
    profile: Mapping[str, Any]
    context: str = "training"


def _digest(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generated(name: str, generator: str, **params: Any) -> DataRecord:
    """A data set made by ``generator`` (a dotted function name) from ``params``: the digest covers both."""
    return DataRecord(name, _digest({"generator": generator, **params}), "code", generator, dict(params))


def from_files(name: str, source: str, files: Mapping[str, str], source_type: str = "local") -> DataRecord:
    """A data set read from ``files`` (file name -> ``"sha256:HEX"``) under ``source``: the digest covers the
    checksums, so the same bytes anywhere give the same digest."""
    return DataRecord(name, _digest(dict(files)), source_type, source, {"files": dict(files)})


@dataclass(frozen=True)
class TrainedModel:
    """A trained model as the registry rebuilds it: ``build_model(name, **kwargs)`` then ``load_state_dict``.

    name:   a :mod:`core.models` registry name (``resnet20``, ``mlp``, ...).
    kwargs: the builder's keyword arguments (JSON values).
    module: the trained ``torch.nn.Module``.
    example_input: a small batch (at least 2 rows) of what the module takes, e.g. ``test_inputs[:2]``: with it the
            logged model also gets an MLflow ``pytorch`` flavour (a ``torch.export`` program, traced on it) that
            MLflow's own loaders read; None: the model is logged for the project's loader only.
    """

    name: str
    kwargs: dict[str, Any]
    module: Any
    example_input: Any = field(default=None, compare=False)


class EpochHooks(Protocol):
    """Per-epoch callbacks of a study that reports epochs (``Study.reports_epochs``; checkpoints with
    ``Study.checkpoints``).

    The contract: ``run_point`` calls ``epoch_end(epoch, metrics, state)`` after each epoch (epoch 0 first) with
    that epoch's metrics (floats; with ``--scheduler asha`` they must hold the ``--metric``); a checkpointing
    study also starts with ``restore()`` and continues after the epoch of the state it returns.  ``tune_jobs``
    implements them: for packed points by keeping the epochs as the run's histories (step = epoch, written when
    the point ends); under a scheduler or for a checkpointing study by logging each epoch to the point's MLflow
    run and reporting it to Ray Tune (where a scheduler may stop the point), with checkpoints for the latter.
    The default :data:`NO_HOOKS` does nothing, so the same ``run_point`` runs in a plain loop (tests, benchmarks).
    """

    def restore(self) -> dict[str, Any] | None:
        """The state saved by the last ``epoch_end`` of an earlier attempt, or None."""

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        """Called after each epoch with that epoch's metrics; ``state()`` builds a resumable snapshot (call it
        only to keep one: it copies the model)."""


class NoHooks:
    """:class:`EpochHooks` that keep nothing: nothing to restore, epochs pass unrecorded."""

    def restore(self) -> None:
        return None

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        return None


NO_HOOKS = NoHooks()


@dataclass(frozen=True)
class PointContext:
    """Where and how a point runs, as opposed to what it computes (its config).

    device:  ``"cpu"`` or ``"cuda"`` (the trial was given a GPU and torch sees one).
    threads: CPUs Ray reserved for the point (at least 1).  Float reductions
             depend on torch's thread count, so the built-in studies pin it as
             a protocol value (``torch_threads``) instead; a study whose
             numbers do not depend on it may use them all.
    hooks:   per-epoch callbacks (:data:`NO_HOOKS` unless the study reports epochs).
    point_hooks: for a study's ``run_points``: the hooks of each of its configs, in order (empty: none).
    """

    device: str = "cpu"
    threads: int = 1
    hooks: EpochHooks = NO_HOOKS
    point_hooks: tuple[EpochHooks, ...] = ()


PLAIN = PointContext()
