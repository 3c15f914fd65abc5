"""A validated launch request, in the groups ``--help`` shows: what to run, where to record it, what compute
runs it, how points are searched, and what each point leaves behind."""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from tune_jobs.space import Dimension
from tune_jobs.study import Study


class UsageError(ValueError):
    """A bad command-line value; the launcher prints it and exits with status 2."""


def fail_usage(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True)
class Tracking:
    """Where the sweep is recorded (``tracking (MLflow)`` flags)."""

    uri: str
    experiment: str
    resume: str | None = None  # a sweep id, "latest", or None for a new sweep
    force: bool = False
    timeout: float = 120.0


@dataclass(frozen=True)
class Compute:
    """What runs the points (``compute (Ray)`` flags)."""

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 0
    points_per_trial: int = 1
    storage_path: str | None = None
    point_timeout: float | None = None
    wait_for_resources: bool = False


@dataclass(frozen=True)
class Search:
    """How points are chosen and stopped (``search and early stopping (Ray Tune)`` flags).

    ``bounds``: configs at every searched key's bounds (checked like points; a study's ``prepare`` sees them too).
    ``packed``: a random search of a study that packs cheap points, sampled on the driver and run as a grid.
    """

    algorithm: str = "grid"
    space: tuple[Dimension, ...] = ()
    num_samples: int = 1
    metric: str | None = None
    mode: str | None = None
    scheduler: str = "fifo"
    grace_period: int = 1
    reduction_factor: float = 3.0
    seed: int = 0
    packed: bool = False
    bounds: tuple[Any, ...] = ()

    def params(self) -> dict[str, Any]:
        """The search's settings as the parent run's params (none for a plain grid)."""
        if self.algorithm == "grid" and self.scheduler == "fifo":
            return {}
        params = {"search": self.algorithm, "num_samples": self.num_samples, "search_seed": self.seed,
                  "scheduler": self.scheduler, **{f"space.{d.key}": d.describe() for d in self.space}}
        if self.metric:
            params.update(metric=self.metric, mode=self.mode)
        if self.scheduler == "asha":
            params.update(grace_period=self.grace_period, reduction_factor=self.reduction_factor)
        return params

    def describe(self) -> str:
        """One line for the console: the search, its space and its scheduler."""
        parts = [f"{self.algorithm} search" + (f" of {self.num_samples} sample(s) per grid point" if self.space
                                               else "")]
        parts += [f"{d.key}={d.describe()}" for d in self.space]
        if self.scheduler == "asha":
            parts.append(f"ASHA on {self.metric} ({self.mode}), grace {self.grace_period} epoch(s), "
                         f"reduction factor {self.reduction_factor:g}")
        elif self.metric:
            parts.append(f"{self.mode} {self.metric}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Outputs:
    """What each point leaves in its run, and the analysis after the sweep (``models, checkpoints and outputs``)."""

    log_models: bool = False
    system_metrics: float = 0.0
    checkpoint_every: int | None = None  # None: auto
    keep_checkpoints: bool = False
    analyze_out: str | None = None
    progress: str = "auto"  # console lines: one of PROGRESS


#: ``--progress`` values; ``auto`` adds epoch lines (every 10 % of a point's epochs) for launches of at most
#: FEW_POINTS points.
PROGRESS = ("auto", "points", "epochs", "none")
FEW_POINTS = 4


@dataclass(frozen=True)
class Launch:
    """A validated launch request: the study's points, and the groups of settings that run and record them."""

    study: Study
    study_ref: str
    grid: dict[str, tuple]
    fixed: dict[str, Any]
    points: list[Any]
    tracking: Tracking
    compute: Compute = field(default_factory=Compute)
    search: Search = field(default_factory=Search)
    outputs: Outputs = field(default_factory=Outputs)
    switches: dict[str, bool] = field(default_factory=dict)
    point_dims: tuple[str, ...] | None = None  # a search's point names: swept grid dimensions, then searched keys
    argv: tuple[str, ...] = ()  # the flags as given (the record's command to run the launch again)

    @property
    def searching(self) -> bool:
        """Ray Tune samples points (a search space) or stops them early: one point per Ray trial. A random search
        of a study that packs cheap points is sampled on the driver instead and runs as a grid."""
        return (self.search.algorithm != "grid" and not self.search.packed) or self.search.scheduler != "fifo"

    @property
    def searched_dims(self) -> tuple[str, ...]:
        """Grid dimensions a search samples instead (``--space`` of a grid key): they leave the grid."""
        return tuple(d.key for d in self.search.space if d.key in self.grid)

    @property
    def recorded_grid(self) -> dict[str, tuple]:
        """The grid as the sweep's parent records it: without the searched dimensions (``space.<key>`` instead)."""
        return {d: v for d, v in self.grid.items() if d not in self.searched_dims}

    @property
    def n_points(self) -> int:
        """Points the launch evaluates: the grid's, each repeated ``num_samples`` times by a search."""
        if self.search.packed or self.search.algorithm == "grid":
            return len(self.points)
        return len(self.points) * self.search.num_samples

    def point_key(self, config: Any) -> str:
        """The point's identity in this launch's record."""
        return self.study.point_key(config, self.point_dims)
