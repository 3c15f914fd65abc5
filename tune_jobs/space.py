"""Search spaces from the command line: ``--space KEY=loguniform(0.01,0.3)`` -> a :class:`Dimension`.

Distributions (Ray Tune's, same arguments): ``uniform(low,high)``,
``loguniform(low,high)`` (``0 < low``), ``randint(low,high)`` (integers,
``high`` exclusive) and ``choice(v1,v2,...)``.  Parsing imports no Ray; the
runner turns a dimension into Ray Tune's sampler with :meth:`Dimension.to_tune`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from record.schema import DecodeError, decode

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


class SpaceError(ValueError):
    """A ``--space`` entry that cannot be sampled; the message names it."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: a distribution and its arguments (``choice``: the values, already typed)."""

    key: str
    kind: str
    args: tuple

    def to_tune(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)

    def sample(self, rng) -> Any:
        """One value drawn with ``rng`` (a ``numpy.random.Generator``), for searches packed on the driver."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        if self.kind == "randint":
            return int(rng.integers(self.args[0], self.args[1]))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.args[0]), math.log(self.args[1]))))
        return float(rng.uniform(*self.args))

    def bounds(self) -> tuple:
        """Values every sample lies between (checked against the config before anything starts)."""
        if self.kind == "choice":
            return self.args
        if self.kind == "randint":
            return self.args[0], self.args[1] - 1
        return self.args

    def describe(self) -> str:
        return f"{self.kind}({','.join(map(str, self.args))})"


def parse_dimension(key: str, text: str, parse_value: Callable[[str], Any]) -> Dimension:
    """``text`` (``loguniform(0.01,0.3)``) as a :class:`Dimension`; ``parse_value`` types a ``choice`` value."""
    shown = f"--space {key}={text}"
    match = _CALL.match(text)
    if not match:
        raise SpaceError(f"{shown}: expected DISTRIBUTION(ARGS), one of {', '.join(DISTRIBUTIONS)}")
    kind, inside = match.group(1), match.group(2)
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{shown}: unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    parts = [p.strip() for p in inside.split(",")] if inside.strip() else []
    if kind == "choice":
        if not parts:
            raise SpaceError(f"{shown}: choice needs at least one value")
        values = tuple(parse_value(p) for p in parts)
        if len(set(values)) != len(values):
            raise SpaceError(f"{shown}: choice repeats a value")
        return Dimension(key, kind, values)
    if len(parts) != 2:
        raise SpaceError(f"{shown}: {kind} takes (low,high), got {len(parts)} argument(s)")
    try:
        low, high = (decode(p, "int" if kind == "randint" else "float", shown) for p in parts)
    except DecodeError:
        number = "whole numbers" if kind == "randint" else "numbers"
        raise SpaceError(f"{shown}: {kind} takes two {number}, got {inside!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise SpaceError(f"{shown}: {kind} needs finite low < high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{shown}: loguniform needs 0 < low, got low={low}")
    return Dimension(key, kind, (low, high))


class Shared(dict):
    """A dict that deep copies share instead of copying: a Ray Tune grid value that nothing mutates.

    For each Ray trial it makes, Ray Tune deep-copies the whole search space, every grid value included: with a
    sweep's points as grid values that cost grew with the square of the points (most of the driver's CPU at
    10,125 points). Picklable like a dict (Ray Tune's saved experiment holds it).
    """

    def __deepcopy__(self, memo: dict) -> Shared:
        return self
