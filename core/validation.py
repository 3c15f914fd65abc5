"""Config validation with one message shape: ``"<name> must be <rule>, got <value>"``.

In the spirit of scikit-learn's ``check_scalar``: each helper checks one value,
returns it coerced to its plain Python type, and raises ``ValueError`` naming
the field, the rule and the value.  Bounds are shown as given (``low=0`` reads
``> 0``, ``low=0.0`` reads ``> 0.0``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
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
