"""Config validation with one message shape: ``"<name> must be <rule>, got <value>"``.

In the spirit of scikit-learn's ``check_scalar``: each helper checks one value,
returns it coerced to its plain Python type, and raises ``ValueError`` naming
the field, the rule and the value.  Bounds are shown as given (``low=0`` reads
``> 0``, ``low=0.0`` reads ``> 0.0``).  A config declares its fields' rules
once (``RULES``, :class:`Rule`); :func:`check_fields` checks them and the
launcher's ``--help`` shows them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


def fail(name: str, rule: str, value: Any) -> ValueError:
    """The error every helper raises: ``<name> must be <rule>, got <value!r>``."""
    return ValueError(f"{name} must be {rule}, got {value!r}")


def _range_rule(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def _check_range(name: str, value: Any, low: Any, high: Any, low_open: bool, high_open: bool) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise fail(name, _range_rule(low, high, low_open, high_open), value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *,
              low_open: bool = False, high_open: bool = False) -> int:
    """An integer (not a bool) within the optional bounds; returned as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail(name, "an integer", value)
    _check_range(name, value, low, high, low_open, high_open)
    return int(value)


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not a bool) within the optional bounds; returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise fail(name, "a finite number", value)
    _check_range(name, value, low, high, low_open, high_open)
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise fail(name, "True or False", value)
    return value


def check_choice(name: str, value: Any, options: Collection[Any]) -> Any:
    """One of ``options`` (the message lists them)."""
    if value not in options:
        raise fail(name, "one of " + ", ".join(map(repr, options)), value)
    return value


def check_reals(name: str, values: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers, each within the bounds; returned as a tuple of floats."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise fail(name, "a sequence of numbers", values)
    values = tuple(values)
    if not values:
        raise fail(name, "a non-empty sequence", values)
    return tuple(check_real(name, v, low, high, low_open=low_open, high_open=high_open) for v in values)


@dataclass(frozen=True)
class Rule:
    """One config field's constraint, declared once in its config's ``RULES`` (as scikit-learn declares
    ``_parameter_constraints``): checked by :func:`check_fields`, shown by the launcher's ``--help``.

    kind: ``int``, ``real``, ``reals`` (a non-empty sequence of reals), ``bool`` or ``choice`` (``options``).
    """

    kind: str
    low: Any = None
    high: Any = None
    low_open: bool = False
    high_open: bool = False
    options: tuple = ()
    optional: bool = False  # None is allowed (a default resolved elsewhere)

    def check(self, name: str, value: Any) -> Any:
        """``value`` checked (and coerced to its plain type), else the one-shape ``ValueError``."""
        if value is None and self.optional:
            return None
        bounds = {"low": self.low, "high": self.high, "low_open": self.low_open, "high_open": self.high_open}
        if self.kind == "int":
            return check_int(name, value, **bounds)
        if self.kind == "real":
            return check_real(name, value, **bounds)
        if self.kind == "reals":
            return check_reals(name, value, **bounds)
        if self.kind == "bool":
            return check_bool(name, value)
        return check_choice(name, value, self.options)

    def describe(self) -> str:
        """The rule in words: ``>= 1``, ``in [0, 1]``, ``one of 'circles', 'moons'``."""
        if self.kind == "choice":
            text = "one of " + ", ".join(map(repr, self.options))
        elif self.low is None and self.high is None:
            text = {"int": "an integer", "bool": "True or False"}.get(self.kind, "finite")
        else:
            text = _range_rule(self.low, self.high, self.low_open, self.high_open)
        return text + (" or None" if self.optional else "")


def Int(low: int | None = None, high: int | None = None, **flags: bool) -> Rule:  # noqa: N802 - a rule's name
    """An integer within the bounds (``low_open``, ``high_open``, ``optional`` as in :class:`Rule`)."""
    return Rule("int", low, high, **flags)


def Real(low: float | None = None, high: float | None = None, **flags: bool) -> Rule:  # noqa: N802
    """A finite real number within the bounds."""
    return Rule("real", low, high, **flags)


def Reals(low: float | None = None, high: float | None = None, **flags: bool) -> Rule:  # noqa: N802
    """A non-empty sequence of finite reals, each within the bounds."""
    return Rule("reals", low, high, **flags)


def Bool(**flags: bool) -> Rule:  # noqa: N802
    """True or False."""
    return Rule("bool", **flags)


def OneOf(*options: Any, **flags: bool) -> Rule:  # noqa: N802
    """One of ``options``."""
    return Rule("choice", options=tuple(options), **flags)


def field_rules(config_type: type) -> dict[str, Rule]:
    """A config type's declared rules (its ``RULES`` mapping; empty if it declares none)."""
    return dict(getattr(config_type, "RULES", {}))


def check_fields(config: Any, coerce: bool = False) -> None:
    """Check every field of ``config`` that its ``RULES`` constrains, in declaration order; ``coerce``: store
    each value as its plain type (``numpy.int64(3)`` -> ``3``) on the frozen dataclass."""
    for name, rule in field_rules(type(config)).items():
        value = rule.check(name, getattr(config, name))
        if coerce:
            object.__setattr__(config, name, value)
