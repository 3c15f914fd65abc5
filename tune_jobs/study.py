"""A study, declared once: its protocol dataclass, grid, trial function and metrics.

Everything else (CLI, validation of overrides, Ray Tune launch, MLflow
logging, resume) is shared and lives in :mod:`tune_jobs.cli`,
:mod:`tune_jobs.runner` and :mod:`tune_jobs.tracking`.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.trial import TrialResult

#: Module holding each study's ``STUDY`` declaration (workers import it by name).
STUDY_MODULES = {
    "poison_sensitivity": "tune_jobs.poison_sensitivity",
    "adversarial_scaling": "tune_jobs.adversarial_scaling",
    "robust_loss": "tune_jobs.robust_loss",
}


@dataclass(frozen=True)
class Study:
    """One study.

    name:             experiment default and the ``robustlab.study`` tag.
    config_type:      frozen dataclass holding one grid point with every protocol
                      value; its ``__post_init__`` rejects bad values with a
                      ``ValueError`` naming them.
    grid:             the swept dimensions (config field names) and their defaults.
    run_trial:        ``config -> TrialResult`` (``config, hooks -> TrialResult``
                      when ``checkpoints``).
    metrics:          final metrics every finished child run carries.
    points_per_trial: at most this many grid points per Ray trial, computed in
                      sequence (Ray's per-trial overhead is ~0.4 s; cheap points
                      share a trial); fewer when that leaves Ray slots idle.
    checkpoints:      the trial takes :class:`core.trial.EpochHooks` and resumes
                      from Ray Tune checkpoints.
    unlogged_fields:  config fields too bulky to be MLflow params (logged as
                      artifacts instead).
    cost:             optional relative cost of a point; the runner groups points
                      of similar cost and starts the most expensive Ray trials
                      first, so the last trial to finish is a short one.
    options:          study-specific command-line flags (see :class:`Option`).
    prepare:          optional driver-side step run once before Ray starts, on
                      all points and the values of the switch options (e.g.
                      load and probe a user's loss, fetch data); returns the
                      configs to ship.  A ``ValueError`` is a usage error.
    analyze_by_default: run the analysis after the sweep even without ``--analyze``.

    A config may define ``params()`` returning the flat, fully resolved values
    to log; otherwise every field not in ``unlogged_fields`` is logged.
    """

    name: str
    description: str
    config_type: type
    grid: Mapping[str, tuple]
    run_trial: Callable[..., TrialResult]
    metrics: tuple[str, ...]
    points_per_trial: int = 1
    checkpoints: bool = False
    unlogged_fields: tuple[str, ...] = ()
    cost: Callable[[Any], float] | None = None
    options: tuple["Option", ...] = ()
    prepare: Callable[[list[Any], dict[str, Any]], list[Any]] | None = None
    analyze_by_default: bool = False

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.config_type)}
        unknown = set(self.grid) - names
        if unknown:
            raise ValueError(f"grid dimensions {sorted(unknown)} are not fields of {self.config_type.__name__}")
        if self.checkpoints and self.points_per_trial != 1:
            raise ValueError("a checkpointing study runs one grid point per Ray trial (points_per_trial=1)")

    @property
    def field_types(self) -> dict[str, Any]:
        return typing.get_type_hints(self.config_type)

    @property
    def fixed_fields(self) -> list[str]:
        """Protocol values that ``--set`` may override (every non-grid field)."""
        return [f.name for f in dataclasses.fields(self.config_type) if f.name not in self.grid]

    def defaults(self) -> dict[str, Any]:
        """The protocol's default for every fixed field."""
        out = {}
        for f in dataclasses.fields(self.config_type):
            if f.name in self.grid:
                continue
            out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        return out

    def points(self, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]) -> list[Any]:
        """Every grid point as a validated config, in grid order (first dimension outermost)."""
        dims = list(self.grid)
        return [
            self.config_type(**fixed, **dict(zip(dims, values)))
            for values in itertools.product(*(grid[d] for d in dims))
        ]

    def point_key(self, config: Any) -> str:
        """Stable identity of a grid point: ``dim=value`` pairs in grid order."""
        return " ".join(f"{d}={format_value(getattr(config, d))}" for d in self.grid)

    def params(self, config: Any) -> dict[str, str]:
        """Flat MLflow params for a point."""
        if hasattr(config, "params"):
            return {k: format_value(v) for k, v in config.params().items()}
        return {
            f.name: format_value(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if f.name not in self.unlogged_fields
        }


@dataclass(frozen=True)
class Option:
    """A study-specific flag: an alias of ``--set FIELD=VALUE`` (``field``) or a switch handed to ``prepare``."""

    flag: str
    help: str
    field: str | None = None


def format_value(value: Any) -> str:
    """How a config value is written in params, point keys and the CLI (tuples comma-joined)."""
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def load_study(name: str) -> Study:
    """The declaration of the study called ``name``."""
    try:
        module = STUDY_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(STUDY_MODULES)}") from None
    return importlib.import_module(module).STUDY
