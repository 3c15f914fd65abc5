"""A study, declared once: its protocol, grid, point function, metrics, analysis and checks.

Everything else (CLI, validation of overrides, Ray Tune launch, MLflow
record, resume) is shared: :mod:`tune_jobs.cli`, :mod:`tune_jobs.runner`,
:mod:`record`.  A study is found by reference (:func:`load_study`):

* a built-in name: a module of :mod:`tune_jobs.studies` named after its study
  (a file dropped there is a built-in study; nothing else to edit);
* ``package.module``: that module's ``STUDY``, anywhere on the Python path;
* ``package.module:ATTR``: another attribute of it.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import pkgutil
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.common import Analysis
from record import schema

BUILTIN_PACKAGE = "tune_jobs.studies"

#: The fixed seed list ``--seeds N`` takes the first N of: the papers' 42, 123, 7, then 1, 2, 3, ... (skipping
#: those three), so "the same study with 10 seeds" means the same seeds everywhere.
SEEDS: tuple[int, ...] = (42, 123, 7, *(s for s in range(1, 10_000) if s not in (7, 42, 123)))


@dataclass(frozen=True)
class Option:
    """A study-specific flag: an alias of ``--set FIELD=VALUE`` (``field``) or a switch handed to ``prepare``."""

    flag: str
    help: str
    field: str | None = None


@dataclass(frozen=True)
class Study:
    """One study.

    name:             experiment default and the ``robustlab.study`` tag.
    description:      what ``--help`` says first.
    config_type:      frozen dataclass holding one grid point with every protocol
                      value; its ``__post_init__`` rejects bad values with a
                      ``ValueError`` naming them (:mod:`core.validation`).
    grid:             the swept dimensions (config field names) and their defaults.
    run_point:        ``(config, core.point.PointContext) -> core.point.PointResult``.
    run_points:       optional ``(configs, context) -> results``: the points of one Ray
                      trial computed at once (cheap points trained as one batched
                      computation); result ``i`` must be ``run_point(configs[i])``'s,
                      bit for bit.  If it raises, each point runs alone.
    metrics:          final metrics every point's result must carry (checked).
    analysis:         :class:`analysis.common.Analysis` (analyze and checks), or None.
    points_per_trial: at most this many grid points per Ray trial, computed in
                      sequence or by ``run_points`` (Ray's per-trial overhead outweighs a cheap point; they
                      share a trial); fewer when that leaves Ray slots idle.
    reports_epochs:   ``run_point`` calls ``context.hooks.epoch_end(epoch, metrics, state)``
                      after every epoch (see :class:`core.point.EpochHooks`): the
                      epochs become the run's histories (step = epoch), logged in
                      one batch when the point ends, so cheap points still share a
                      Ray trial; with ``--scheduler asha`` each epoch also goes to
                      Ray Tune (and live to the run), one point per Ray trial.
    checkpoints:      also ``context.hooks.restore()`` and ``state()``: checkpoints kept in
                      the point's MLflow run that a retried or resumed point
                      continues from; every epoch is logged live (one point per
                      Ray trial). Implies ``reports_epochs``.
    log_models:       log each finished point's ``PointResult.model`` to its run
                      by default (``--log-models`` / ``--no-log-models``).
    system_metrics:   seconds between samples of MLflow's system metrics (CPU,
                      memory, disk, network, GPU) in each point's run; 0 for
                      none (the default: short points); ``--system-metrics``.
    unlogged_fields:  config fields too bulky to be MLflow params.
    cost:             optional relative cost of a point; the runner starts the
                      most expensive Ray trials first, so the last to finish is short.
    options:          study-specific command-line flags (see :class:`Option`).
    prepare:          optional driver-side step run once before Ray starts, on
                      all points and the values of the switch options (load and
                      probe a user's loss, fetch data); returns the configs to
                      ship.  A ``ValueError`` is a usage error (exit status 2).
    analyze_by_default: run the analysis after the sweep even without ``--analyze``.
    point_timeout:    seconds after which a point fails (``--point-timeout``); None for none.
    short_names:      dimension -> short name for run names (``poison_fraction`` -> ``pf``:
                      the run ``pf=0.05 w=64 s=42``); others keep their name.
    search_metrics:   metrics a searcher or scheduler may select on (``--metric``):
                      measured on a validation split, never on the test set.
    reported_metrics: optional ``config -> metric names`` a point of that config reports
                      (at its end, and every epoch for a study reporting epochs);
                      default: ``metrics`` and ``search_metrics``.  A ``--metric``
                      that some point of a launch does not report exits 2 before Ray starts;
                      a point whose result (or reported epoch) then lacks it fails, naming it.
    search_defaults:  protocol values a search or scheduler launch uses unless
                      ``--set`` says otherwise (e.g. ``{"val_fraction": 0.1}``).
    open_params:      prefix -> config field holding named values ``--set``/``--space
                      PREFIX.NAME=...`` set (robust_loss: ``loss`` -> ``loss_params``,
                      a sorted tuple of ``(name, value)``), logged as ``PREFIX.NAME``.

    A config may define ``params()`` returning the flat, fully resolved values
    to log; otherwise every field not in ``unlogged_fields`` is logged.
    """

    name: str
    description: str
    config_type: type
    grid: Mapping[str, tuple]
    run_point: Callable[..., Any]
    metrics: tuple[str, ...]
    analysis: Analysis | None = None
    run_points: Callable[[list[Any], Any], list[Any]] | None = None
    points_per_trial: int = 1
    reports_epochs: bool = False
    checkpoints: bool = False
    log_models: bool = False
    system_metrics: float = 0.0
    unlogged_fields: tuple[str, ...] = ()
    cost: Callable[[Any], float] | None = None
    options: tuple[Option, ...] = ()
    prepare: Callable[[list[Any], dict[str, Any]], list[Any]] | None = None
    analyze_by_default: bool = False
    point_timeout: float | None = None
    short_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    search_metrics: tuple[str, ...] = ()
    search_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    open_params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reported_metrics: Callable[[Any], Iterable[str]] | None = None

    def __post_init__(self) -> None:
        if self.checkpoints and not self.reports_epochs:  # a checkpointing point reports its epochs
            object.__setattr__(self, "reports_epochs", True)
        if self.name == "sweeps":
            raise ValueError("a study cannot be named 'sweeps': python -m tune_jobs sweeps lists a store's sweeps")
        names = {f.name for f in dataclasses.fields(self.config_type)}
        unknown = set(self.grid) - names
        if unknown:
            raise ValueError(f"grid dimensions {sorted(unknown)} are not fields of {self.config_type.__name__}")
        missing = [f.name for f in dataclasses.fields(self.config_type) if f.name not in self.grid
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"study {self.name!r}: config field {missing[0]!r} has no default and is not a grid "
                             "dimension; give it a default or put it in the grid")
        if self.checkpoints and self.points_per_trial != 1:
            raise ValueError("a checkpointing study runs one grid point per Ray trial (points_per_trial=1)")
        if self.analyze_by_default and self.analysis is None:
            raise ValueError(f"study {self.name!r} analyses by default but declares no analysis")

    @property
    def field_types(self) -> dict[str, Any]:
        return typing.get_type_hints(self.config_type)

    def param_types(self) -> dict[str, str]:
        """The record's type name of every logged config field."""
        return {k: v for k, v in schema.param_types(self.config_type).items() if k not in self.unlogged_fields}

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

    def make_config(self, values: Mapping[str, Any]) -> Any:
        """A config from field values and ``PREFIX.NAME`` open params (merged into their field, sorted)."""
        fields, opened = {}, {}
        for key, value in values.items():
            prefix, dot, name = key.partition(".")
            if dot and prefix in self.open_params:
                opened.setdefault(self.open_params[prefix], {})[name] = value
            else:
                fields[key] = value
        for field_name, named in opened.items():
            fields[field_name] = tuple(sorted({**dict(fields.get(field_name, ())), **named}.items()))
        return self.config_type(**fields)

    def first_point(self, grid: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """The first value of every grid dimension."""
        return {d: grid[d][0] for d in self.grid}

    def is_key(self, key: str) -> bool:
        """Whether ``key`` names a config field or an open param (``loss.q``)."""
        prefix, dot, name = key.partition(".")
        return (prefix in self.open_params and name.isidentifier()) if dot else key in self.field_types

    def point_key(self, config: Any, dims: Sequence[str] | None = None) -> str:
        """Stable identity of a point: ``dim=value`` pairs, of the grid's dimensions in grid order unless a
        search names its own (``dims``: the swept grid dimensions, then the searched keys)."""
        dims = list(self.grid) if dims is None else list(dims)
        return schema.point_key(dims, {d: self.value(config, d) for d in dims})

    def run_name(self, point: str, last: Sequence[str] = ()) -> str:
        """A point's run name (its display name; the ``robustlab.point`` tag keeps the point key): :func:`point_name`
        with the study's short names, the dimensions in ``last`` (those with one value in the launch's grid) after
        the ones that differ between points."""
        return point_name(point, self.short_names, last)

    def value(self, config: Any, key: str) -> Any:
        """A config field's value, or an open param's (``loss.q``; None when not set)."""
        prefix, dot, name = key.partition(".")
        if dot and prefix in self.open_params:
            return dict(getattr(config, self.open_params[prefix])).get(name)
        return getattr(config, key)

    def params(self, config: Any) -> dict[str, Any]:
        """Flat MLflow params for a point (values; :mod:`record` encodes them)."""
        if hasattr(config, "params"):
            return dict(config.params())
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in self.unlogged_fields}

    def reports(self, config: Any) -> set[str]:
        """The metrics a point of ``config`` reports (:attr:`reported_metrics`, by default every declared one)."""
        if self.reported_metrics is not None:
            return set(self.reported_metrics(config))
        return {*self.metrics, *self.search_metrics}

    def check_result(self, result: Any) -> None:
        """Every declared metric present and every metric finite, else an error naming the metric."""
        result.check_declared(self.metrics)
        result.check_finite()


def builtin_studies() -> list[str]:
    """Names of the built-in studies: the modules of :mod:`tune_jobs.studies` (none is imported)."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__))


def study_ref(ref: str) -> str:
    """The canonical ``module:ATTR`` form of a study reference (a built-in name, ``module`` or ``module:ATTR``)."""
    if ":" in ref:
        return ref
    if "." in ref:
        return f"{ref}:STUDY"
    known = builtin_studies()
    if ref not in known:
        raise ValueError(f"unknown study {ref!r}; built-in: {', '.join(known)}; or give package.module "
                         "(its STUDY) or package.module:ATTR")
    return f"{BUILTIN_PACKAGE}.{ref}:STUDY"


def load_study(ref: str) -> Study:
    """The :class:`Study` a reference names (see the module docstring); a ``ValueError`` says what is wrong."""
    module_name, _, attr = study_ref(ref).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise ValueError(f"study {ref!r}: no module {module_name!r} on the Python path") from None
        raise
    study = getattr(module, attr, None)
    if not isinstance(study, Study):
        raise ValueError(f"study {ref!r}: {module_name} has no Study named {attr}")
    if module_name.startswith(BUILTIN_PACKAGE + ".") and study.name != module_name.rpartition(".")[2]:
        raise ValueError(f"built-in study module {module_name} declares {study.name!r}: name it after its study")
    return study


def short_value(value: str) -> str:
    """A value's text for names and console lines: a float to 4 significant digits, anything else as it is."""
    try:
        return f"{float(value):.4g}" if "." in value or "e" in value.lower() else value
    except ValueError:
        return value


def point_name(point: str, short_names: Mapping[str, str] | None = None, last: Sequence[str] = ()) -> str:
    """A point key (``dim=value ...``) as a display name: short names (``poison_fraction`` -> ``pf``), floats to 4
    significant digits, and the dimensions in ``last`` moved to the end, so what differs between points shows
    first (``loss=generalized_ce s=42 bench=cnn-digits-labelflip``)."""
    short_names = short_names or {}
    pairs = [pair.partition("=") for pair in point.split(" ") if pair]
    pairs.sort(key=lambda p: p[0] in last)  # stable: grid order otherwise
    return " ".join(f"{short_names.get(key, key)}={short_value(value)}" for key, _, value in pairs)

