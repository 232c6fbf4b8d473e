"""The ``[tempering]`` table of a config <-> a schedule, every key checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coarseflow.checks import is_int, is_number, show
from coarseflow.errors import ConfigError
from coarseflow.tempering.adaptive import Adaptive
from coarseflow.tempering.schedules import (
    _SECTION,
    AbstractSchedule,
    Explicit,
    Geometric,
    Linear,
    _error,
)

__all__ = ["schedule_from_config", "schedule_to_config"]


_KINDS: dict[str, type[AbstractSchedule]] = {
    "linear": Linear,
    "geometric": Geometric,
    "explicit": Explicit,
    "adaptive": Adaptive,
}
_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("kind", "beta0", "n_betas"),
    "geometric": ("kind", "beta0", "n_betas"),
    "explicit": ("kind", "betas"),
    "adaptive": ("kind", "beta0", "max_kl_increase", "min_ess_fraction", "min_step", "max_step"),
}
# Adaptive criteria can be switched off from TOML (which has no null) with `key = false`.
_OPTIONAL = ("max_kl_increase", "min_ess_fraction")


def schedule_from_config(d: Mapping[str, Any]) -> AbstractSchedule:
    """Build a schedule from a ``[tempering]`` TOML table.

    ``kind`` (required) is one of linear, geometric, explicit, adaptive; the other keys are the
    fields of that class, with the class defaults when absent. For ``adaptive``,
    ``max_kl_increase = false`` or ``min_ess_fraction = false`` switches that criterion off.
    Raises ConfigError naming the key for unknown keys, wrong types and bad values.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{_SECTION}: expected a table, got {show(d)}")
    for key in d:
        if not isinstance(key, str):
            raise ConfigError(f"{_SECTION}: expected string keys, got {show(key)}")
    if "kind" not in d:
        raise ConfigError(f"{_SECTION} kind: missing; expected one of: {', '.join(_KINDS)}")
    kind = d["kind"]
    if not isinstance(kind, str) or kind.lower() not in _KINDS:
        raise _error("kind", f"one of: {', '.join(_KINDS)}", kind)
    kind = kind.lower()
    allowed = _KEYS[kind]
    for key in d:
        if key not in allowed:
            raise ConfigError(
                f"{_SECTION} unknown key {key!r} for kind = {kind!r}; "
                f"expected one of: {', '.join(allowed)}"
            )
    kwargs: dict[str, Any] = {}
    for key in allowed[1:]:
        if key not in d:
            continue
        value = d[key]
        if kind == "adaptive" and key in _OPTIONAL and value is False:
            kwargs[key] = None
            continue
        if key == "betas":
            if not isinstance(value, list | tuple) or not all(is_number(v) for v in value):
                raise _error(key, "a list of numbers", value)
        elif key == "n_betas":
            if not is_int(value):
                raise _error(key, "an integer >= 2", value)
        elif not is_number(value):
            expected = "a number or false" if key in _OPTIONAL else "a number"
            raise _error(key, expected, value)
        kwargs[key] = value
    return _KINDS[kind](**kwargs)


def schedule_to_config(schedule: AbstractSchedule) -> dict[str, Any]:
    """The ``[tempering]`` table that ``schedule_from_config`` turns back into ``schedule``."""
    for kind, cls in _KINDS.items():
        if type(schedule) is cls:
            out: dict[str, Any] = {"kind": kind}
            for key in _KEYS[kind][1:]:
                value = getattr(schedule, key)
                if key == "betas":
                    value = [float(v) for v in value]
                elif value is None:
                    value = False
                elif is_int(value) and key == "n_betas":
                    value = int(value)
                else:
                    value = float(value)
                out[key] = value
            return out
    raise TypeError(f"schedule_to_config: unknown schedule type {type(schedule).__name__}")
