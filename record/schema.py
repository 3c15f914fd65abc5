"""Names and encoding of the record (no MLflow import).

Run layout (README, "Tracking schema"):

* one parent run per sweep launch: ``robustlab.kind=sweep``, ``robustlab.study``,
  ``robustlab.sweep_id`` (= its own run id), ``robustlab.n_points``,
  ``robustlab.command``, ``robustlab.param_types``; params are the fixed
  protocol values and ``grid.<dim>`` lists;
* one run per grid point (``mlflow.parentRunId`` = the sweep):
  ``robustlab.kind=point`` (``trial`` in stores written before schema version 2,
  still read: :data:`POINT_FILTER` finds both), ``robustlab.point`` (``dim=value ...``), ``robustlab.node``,
  ``robustlab.ray_trial``; flat params; final metrics at step 0 and histories
  with ``step`` = epoch (or the index the study documents); each numeric grid value also as the metric
  ``dim.<name>`` at step 0 (:func:`dim_metrics`: numbers MLflow compares and orders); a training
  point's final model as an MLflow logged model named ``model`` whose source run is the point's run
  (``state_dict.pt`` + ``model.json``, and MLflow's ``pytorch`` flavour where the study gave an example input;
  stores written before issue 26 hold the first two as the run's artifacts under ``model/``, still read);
  while it trains, its latest checkpoint under ``checkpoint/`` named by the
  ``robustlab.checkpoint`` tag (removed when the point finishes);
* analysis runs nested under the sweep: ``robustlab.kind=analysis``; its findings as metrics at step 0 (also on
  the sweep), and a finding's curve over an integer dimension as a history ``<finding>_by_<dimension>`` with
  step = the dimension's value (:func:`curve_key`; on the analysis run only);
* every run written since version 2 carries ``robustlab.schema_version``.

Values are written as text by :func:`encode` and read back by :func:`decode`
with the type recorded in ``robustlab.param_types`` (a JSON object: param ->
type name such as ``int``, ``float?``, ``tuple[float]``).  Sweeps written
before that tag existed are decoded by :func:`infer`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

TAG_KIND = "robustlab.kind"
TAG_STUDY = "robustlab.study"
TAG_SWEEP = "robustlab.sweep_id"
TAG_POINT = "robustlab.point"
TAG_ERROR = "robustlab.error"
TAG_NODE = "robustlab.node"
TAG_RAY_TRIAL = "robustlab.ray_trial"
TAG_N_POINTS = "robustlab.n_points"
TAG_COMMAND = "robustlab.command"
TAG_PARAM_TYPES = "robustlab.param_types"
TAG_RAY_EXPERIMENT = "robustlab.ray_experiment"
TAG_LEASE = "robustlab.lease"
TAG_CHECKPOINT = "robustlab.checkpoint"
TAG_RESUMED = "robustlab.resumed_from_epoch"
TAG_STOPPED = "robustlab.stopped_early"
TAG_BEST_RUN = "robustlab.best_run_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_USER = "mlflow.user"
TAG_NOTE = "mlflow.note.content"
TAG_GIT_DIRTY = "robustlab.git_dirty"
TAG_ROBUSTLAB_COMMIT = "robustlab.code_commit"
TAG_VERSIONS = "robustlab.versions"
TAG_HOST = "robustlab.host"
TAG_RERUN = "robustlab.rerun"  # the launch as one line that runs it again from any folder
TAG_CWD = "robustlab.cwd"
TAG_PYTHON = "robustlab.python"
TAG_IMPORT_ROOT = "robustlab.import_root"  # the folder holding the study's top-level package
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_DATASET_CONTEXT = "mlflow.data.context"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

KIND_SWEEP = "sweep"
KIND_POINT = "point"
KIND_POINT_BEFORE = "trial"  # a point's run in stores written before schema version 2 (still read)
KIND_ANALYSIS = "analysis"
#: A point's run, of any schema version: neither a sweep nor an analysis run (MLflow's filter has no IN for tags).
POINT_FILTER = f"tags.`{TAG_KIND}` != '{KIND_SWEEP}' and tags.`{TAG_KIND}` != '{KIND_ANALYSIS}'"
#: The version of this layout, on every run written since it was introduced (none before: version 1).
TAG_SCHEMA_VERSION = "robustlab.schema_version"
SCHEMA_VERSION = "2"

GRID_PREFIX = "grid."
TRACEBACK_ARTIFACT = "error/traceback.txt"
CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"  # the run artifact folder of a point's model in stores written before issue 26 (still read)
MODEL_NAME = "model"  # a point's MLflow logged model: ``runs:/<run id>/model`` resolves to it
MODEL_SPEC = "model.json"
MODEL_WEIGHTS = "state_dict.pt"
#: The logged model's params: the :mod:`core.models` registry name and the builder's arguments (JSON).
MODEL_PARAM_REGISTRY = "registry_name"
MODEL_PARAM_KWARGS = "kwargs"
#: The point run's tags the logged model carries too (its row in the Models tab tells which point it is).
MODEL_TAGS = (TAG_STUDY, TAG_SWEEP, TAG_POINT, TAG_SCHEMA_VERSION)

#: A point's numeric grid (or searched) value as a metric at step 0, beside its param: ``dim.poison_fraction``.
#: MLflow compares and orders metrics as numbers (``metrics.dim.poison_fraction >= 0.3``), params only as text.
DIM_PREFIX = "dim."
#: A finding's curve over an integer dimension: a metric history of the analysis run with the dimension's value as
#: its step, named ``<finding>_by_<dimension>`` (``threshold_by_hidden_width``, step = the width).
CURVE_INFIX = "_by_"

_BASES = {int: "int", float: "float", bool: "bool", str: "str"}
_TYPE_NAME = re.compile(r"^(?:tuple\[)?(int|float|bool|str)\]?\??$")


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric key: characters other than letters, digits, ``_``, ``-`` and ``.`` become
    ``_`` (a loss file's path in a finding's name: ``test_acc_B__home_me_my_loss.py``)."""
    return re.sub(r"[^\w.\-]", "_", name)[:250]


def dim_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values among a point's grid (or searched) ``values`` as metrics named :data:`DIM_PREFIX` + name
    (bools, None, text, tuples and non-finite numbers are left out: they stay params only)."""
    return {metric_key(DIM_PREFIX + name): float(value) for name, value in dict(values).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def is_dim_metric(name: str) -> bool:
    """Whether a metric of a point's run is one of :func:`dim_metrics` (a grid value, not a measurement)."""
    return name.startswith(DIM_PREFIX)


def curve_key(finding: str, dimension: str) -> str:
    """The metric name of ``finding``'s curve over ``dimension`` (see :data:`CURVE_INFIX`)."""
    return metric_key(f"{finding}{CURVE_INFIX}{dimension}")


class DecodeError(ValueError):
    """A param's text does not decode to its type; the message names the param and the text."""


def encode(value: Any) -> str:
    """A config value as param text: tuples and lists comma-joined, floats by ``repr`` (exact round trip)."""
    if isinstance(value, (tuple, list)):
        return ",".join(encode(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def type_name(hint: Any) -> str:
    """The record's name for a type hint: ``int``, ``float``, ``bool``, ``str``, ``tuple[X]``, ``X?`` if optional."""
    optional = ""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = "?" if len(options) < len(typing.get_args(hint)) else ""
        hint = options[0]
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return f"tuple[{_BASES.get(typing.get_args(hint)[0], 'str')}]{optional}"
    return _BASES.get(hint, "str") + optional


def param_types(config_type: type) -> dict[str, str]:
    """Type names of a config dataclass's fields."""
    hints = typing.get_type_hints(config_type)
    return {f.name: type_name(hints[f.name]) for f in dataclasses.fields(config_type)}


def decode(text: str, kind: str | None, name: str = "value") -> Any:
    """Param text back to a value of type ``kind`` (a :func:`type_name`; None: :func:`infer`)."""
    if kind is None:
        return infer(text)
    if not _TYPE_NAME.match(kind):
        raise DecodeError(f"{name}: unknown type {kind!r}")
    text = text.strip()
    if kind.endswith("?"):
        if text.lower() in ("none", "null", ""):
            return None
        kind = kind[:-1]
    if kind.startswith("tuple["):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise DecodeError(f"{name}: needs at least one value, got {text!r}")
        return tuple(decode(p, kind[6:-1], name) for p in parts)
    try:
        if kind == "bool":
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise DecodeError(f"{name}: expected {kind}, got {text!r}") from None
    return text


def decode_number(text: str, name: str = "value") -> bool | int | float:
    """A value of no declared type that must be a number or a bool (``true``/``false``, any case): an int where
    the text is one, else a float (an open param's ``--set loss.q=0.5``)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in ("int", "float"):
        try:
            return decode(text, kind, name)
        except DecodeError:
            continue
    raise DecodeError(f"{text!r} is not a number or true/false")


def infer(text: str) -> Any:
    """A value from text alone (sweeps without recorded types): None, bool, int, float, a tuple of numbers, or str."""
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "," in text:
        parts = [infer(p.strip()) for p in text.split(",")]
        if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
            return tuple(parts)
    return text


def encode_types(kinds: Mapping[str, str]) -> str:
    """The ``robustlab.param_types`` tag value."""
    return json.dumps(dict(kinds), sort_keys=True, separators=(",", ":"))


def decode_types(text: str | None) -> dict[str, str]:
    """The ``robustlab.param_types`` tag back to a mapping (empty for sweeps written before it existed)."""
    return json.loads(text) if text else {}


def point_key(dims: Sequence[str], values: Mapping[str, Any]) -> str:
    """Stable identity of a grid point: ``dim=value`` pairs in grid order."""
    return " ".join(f"{d}={encode(values[d])}" for d in dims)


_TUPLE = "__tuple__"


def pack(values: Mapping[str, Any]) -> str:
    """A point's field values as one JSON text that round-trips exactly (:func:`unpack`): tuples stay tuples
    (nested too), lists lists; numbers, bools, None and strings as they are.

    Configs cross Ray (param space, Ray Tune's saved experiment, restore) in this form: Ray Tune keeps a config
    as JSON, where a tuple would come back a list.
    """
    def tag(value: Any) -> Any:
        if isinstance(value, tuple):
            return {_TUPLE: [tag(v) for v in value]}
        if isinstance(value, list):
            return [tag(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): tag(v) for k, v in value.items()}
        return value

    return json.dumps(tag(dict(values)), separators=(",", ":"))


def unpack(text: str) -> dict[str, Any]:
    """The values :func:`pack` wrote."""
    def untag(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_TUPLE}:
                return tuple(untag(v) for v in value[_TUPLE])
            return {k: untag(v) for k, v in value.items()}
        if isinstance(value, list):
            return [untag(v) for v in value]
        return value

    return untag(json.loads(text))
