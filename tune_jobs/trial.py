"""What crosses from the driver to a Ray trial: a typed context, and points packed by the record's codec.

Ray Tune keeps a trial's config as JSON in its saved experiment, so a tuple in
a config would come back from ``--resume`` a list; points therefore travel as
:func:`record.schema.pack` texts (exact for any field type a study declares),
and the context as a frozen dataclass (pickled whole).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from record import schema


@dataclass(frozen=True)
class TrialContext:
    """Everything a Ray trial needs besides its points: the study, the record, its resources and the launch's
    per-point settings."""

    study: str  # the study reference a worker imports (``module:ATTR``)
    tracking_uri: str
    experiment_id: str
    sweep_id: str
    n_points: int  # the whole launch's, for progress
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    point_timeout: float | None = None
    log_models: bool = False
    checkpoint_every: int | None = None
    keep_checkpoints: bool = False
    system_metrics: float = 0.0
    provenance: Mapping[str, str] = field(default_factory=dict)
    point_dims: tuple[str, ...] | None = None
    space_keys: tuple[str, ...] = ()  # a search's keys, sampled by Ray Tune into the trial's config
    store_identity: tuple[int, int] | None = None  # a SQLite store's file (record.store.store_identity)
    single_dims: tuple[str, ...] = ()  # grid dimensions with one value in this launch: last in run names
    epoch_reports: bool = False  # each epoch goes to Ray Tune: a scheduler compares points between epochs
    metric: str | None = None  # --metric: every point (and each epoch it reports to Ray Tune) must carry it


def pack_point(config: Any) -> str:
    """A config as the text a Ray trial carries."""
    return schema.pack(dataclasses.asdict(config))


def unpack_point(study, text: str) -> Any:
    """The config :func:`pack_point` packed, rebuilt (and so validated) by the study."""
    return study.make_config(schema.unpack(text))


def grid_trial(context: TrialContext, points: list[str]) -> dict[str, Any]:
    """A packed grid trial's value: its context and its points."""
    from tune_jobs.space import Shared

    return Shared(context=context, points=list(points))


def trial_context(config: Mapping[str, Any]) -> TrialContext:
    """The context in a Ray trial's config (a grid trial's ``trial`` value, or a search trial's own key)."""
    return config["trial"]["context"] if "trial" in config else config["context"]


def trial_points(config: Mapping[str, Any]) -> int:
    """How many points a Ray trial's config holds."""
    return len(config["trial"]["points"]) if "trial" in config else 1
