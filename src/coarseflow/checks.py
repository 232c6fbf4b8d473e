"""Range checks shared by the settings classes and the CLI.

Each check returns the value (an int or a float) when it is acceptable and otherwise raises
:class:`~coarseflow.errors.ConfigError` with one line, ``"<where>: expected <what>, got
<value>"``, where ``where`` names the key (``"[training] batch_size"``, ``"--seed"``). The same
checks run whether a setting comes from TOML or from Python: a bool is never a number, a float
is never an integer (12.0 included), and every number must be finite unless a check says
otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from coarseflow.errors import ConfigError

MAX_COUNT = 10**8
"""The largest count a setting or CLI value may ask for (samples, steps, widths): a typo such as
1e12 is refused at once rather than running out of memory or time hours later."""

MAX_SEED = 2**32 - 1
"""JAX keys hold 32 bits of a seed: 2**32 would silently be the same run as 0."""


def show(value: Any) -> str:
    """``value`` as the ``got ...`` part of a message: strings quoted, numpy scalars plain."""
    if isinstance(value, str):
        return repr(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        value = item()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool and not a float such as 12.0."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def is_number(value: Any) -> bool:
    """A real number (int or float, Python or numpy, possibly not finite), not a bool."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(float(value))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def fail(where: str, expected: str, value: Any) -> ConfigError:
    """The one-line error ``"<where>: expected <expected>, got <value>"``."""
    return ConfigError(f"{where}: expected {expected}, got {show(value)}")


def integer(where: str, value: Any, low: int = 0, high: int = MAX_COUNT) -> int:
    """``value`` if it is an integer in [low, high], else a ConfigError naming ``where``.

    The message says "an integer > 0" for low = 1 and "an integer >= low" otherwise, and adds
    the upper end only when the value is above it.
    """
    if is_int(value) and low <= value <= high:
        return int(value)
    expected = "an integer > 0" if low == 1 else f"an integer >= {low}"
    if is_int(value) and value > high:
        expected = f"an integer from {low} to {high}"
    raise fail(where, expected, value)


def seed(where: str, value: Any) -> int:
    """A PRNG seed: an integer in [0, 2**32 - 1]."""
    if is_int(value) and 0 <= value <= MAX_SEED:
        return int(value)
    raise fail(where, f"an integer from 0 to {MAX_SEED}", value)


def number(
    where: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = True,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite number in the interval from ``low`` to ``high``
    (open at ``low`` and closed at ``high`` by default; an infinite end is always open), else a
    ConfigError naming ``where``."""
    if is_finite(value):
        x = float(value)
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        if above and below:
            return x
    raise fail(where, _interval(low, high, low_open, high_open), value)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """'a finite number > 0', 'a number in (0, 1]', ...: the words of :func:`number`."""
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        return f"a finite number {'>' if low_open else '>='} {_num(low)}"
    if math.isinf(low):
        return f"a number {'<' if high_open else '<='} {_num(high)}"
    return (
        f"a number in {'(' if low_open else '['}{_num(low)}, {_num(high)}"
        f"{')' if high_open else ']'}"
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def choice(where: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of the strings ``options``, else a ConfigError listing them."""
    options = tuple(options)
    if isinstance(value, str) and value in options:
        return value
    raise fail(where, "one of " + ", ".join(options), value)


def boolean(where: str, value: Any) -> bool:
    """``value`` if it is true or false, else a ConfigError naming ``where``."""
    if isinstance(value, bool):
        return value
    raise fail(where, "true or false", value)
