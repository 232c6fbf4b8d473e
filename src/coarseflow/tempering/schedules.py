"""What a tempering schedule is (the ladder beta_0 < beta_1 < ... < beta_K = 1, METHOD.md
section 5), the limits every ladder keeps, and the fixed ladders.

A schedule is a typed, immutable equinox Module with two methods:

* ``first_beta()``: where training starts;
* ``next_beta(beta, energies)``: the rung after ``beta``, or ``None`` once ``beta == 1``.

``energies`` are the reduced energies u(x_i), shape (N,), of all-atom samples drawn from the
current model at ``beta`` (so approximately x_i ~ p_beta ∝ exp(-beta u)). The fixed ladders
(``Linear``, ``Geometric``, ``Explicit``) ignore them; ``Adaptive`` uses them to choose the step
(:mod:`coarseflow.tempering.adaptive`).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import Float

from coarseflow.checks import fail, is_int, is_number, show
from coarseflow.errors import ConfigError

__all__ = [
    "AbstractSchedule",
    "Explicit",
    "Geometric",
    "Linear",
]

# Betas closer than this to 1 count as 1; two betas closer than this count as the same rung.
BETA_ATOL = 1e-12
# A ladder's betas are >= MIN_BETA (a temperature at most 10^6 times the target's), adjacent
# rungs at least MIN_STEP apart (so their 12-decimal checkpoint names differ) and at most
# MAX_RUNGS of them.
MIN_BETA = 1e-6
MIN_STEP = 1e-9
MAX_RUNGS = 100_000
_SECTION = "[tempering]"


# ----------------------------------------------------------------------------- validation helpers


def _error(field: str, expected: str, value: Any) -> ConfigError:
    return fail(f"{_SECTION} {field}", expected, value)


def _check_open_unit(field: str, value: Any) -> None:
    if not (is_number(value) and 0.0 < float(value) < 1.0):
        raise _error(field, "a number in (0, 1)", value)


def _check_beta0(value: Any) -> None:
    _check_open_unit("beta0", value)
    if float(value) < MIN_BETA:
        raise _error("beta0", f"a number in [{MIN_BETA:g}, 1)", value)


def _check_n_betas(value: Any) -> None:
    if not (is_int(value) and value >= 2):
        raise _error("n_betas", "an integer >= 2", value)
    if value > MAX_RUNGS:
        raise _error("n_betas", f"an integer from 2 to {MAX_RUNGS}", value)


def _check_gaps(ladder: tuple[float, ...]) -> None:
    """Adjacent rungs of a spaced ladder at least MIN_STEP apart."""
    gaps = np.diff(np.asarray(ladder))
    if gaps.size and float(gaps.min()) < MIN_STEP:
        raise ConfigError(
            f"{_SECTION} n_betas: {len(ladder)} betas from beta0 = "
            f"{ladder[0]:g} to 1 are closer than {MIN_STEP:g}; use fewer"
        )


def _check_beta(beta: Any) -> float:
    """A beta passed to next_beta by the training loop: a number in (0, 1] (else a bug)."""
    if not is_number(beta) or not 0.0 < float(beta) <= 1.0 + BETA_ATOL:
        raise ValueError(f"beta: expected a number in (0, 1], got {show(beta)}")
    return float(beta)


def _next_on_ladder(ladder: tuple[float, ...], beta: Any) -> float | None:
    beta = _check_beta(beta)
    if beta >= 1.0 - BETA_ATOL:
        return None
    for b in ladder:
        if b > beta + BETA_ATOL:
            return b
    return 1.0  # unreachable: ladders end at 1


def _to_float_tuple(value: Any) -> Any:
    """Lenient converter for Explicit.betas: a sequence of numbers -> tuple of floats.

    Anything else is passed through unchanged so that __check_init__ can report it.
    """
    if isinstance(value, list | tuple | np.ndarray) and all(is_number(v) for v in value):
        return tuple(float(v) for v in value)
    return value


# ----------------------------------------------------------------------------- schedules


class AbstractSchedule(eqx.Module):
    """A tempering ladder in beta, ending at beta = 1 (the target)."""

    @abc.abstractmethod
    def first_beta(self) -> float:
        """The first rung beta_0 in (0, 1]."""

    @abc.abstractmethod
    def next_beta(self, beta: float, energies: Float[np.ndarray, " N"] | None) -> float | None:
        """The rung after ``beta`` (> beta, <= 1), or None when ``beta`` is 1 (done).

        ``energies``: reduced energies u(x_i) of samples from the current model at ``beta``;
        ignored by the fixed ladders, required by ``Adaptive``.
        """


class _SpacedLadder(AbstractSchedule):
    """``n_betas`` values from ``beta0`` to 1, both ends included, spaced by ``ladder()``."""

    beta0: eqx.AbstractVar[float]
    n_betas: eqx.AbstractVar[int]

    def __check_init__(self):
        _check_beta0(self.beta0)
        _check_n_betas(self.n_betas)
        _check_gaps(self.ladder())

    def ladder(self) -> tuple[float, ...]:
        raise NotImplementedError

    def first_beta(self) -> float:
        return float(self.beta0)

    def next_beta(self, beta: float, energies: Float[np.ndarray, " N"] | None) -> float | None:
        del energies
        return _next_on_ladder(self.ladder(), beta)


class Linear(_SpacedLadder):
    """``n_betas`` evenly spaced values from ``beta0`` to 1, both ends included."""

    beta0: float = 0.01
    n_betas: int = 10

    def ladder(self) -> tuple[float, ...]:
        betas = np.linspace(float(self.beta0), 1.0, int(self.n_betas))
        betas[-1] = 1.0
        return tuple(float(b) for b in betas)


class Geometric(_SpacedLadder):
    """``n_betas`` log-spaced values from ``beta0`` to 1, both ends included (constant ratio)."""

    beta0: float = 0.01
    n_betas: int = 10

    def ladder(self) -> tuple[float, ...]:
        betas = np.geomspace(float(self.beta0), 1.0, int(self.n_betas))
        betas[0], betas[-1] = float(self.beta0), 1.0
        return tuple(float(b) for b in betas)


class Explicit(AbstractSchedule):
    """A given ladder: strictly increasing values in (0, 1], the last one exactly 1."""

    betas: tuple[float, ...] = eqx.field(converter=_to_float_tuple)

    def __check_init__(self):
        betas = self.betas
        if not isinstance(betas, tuple) or len(betas) == 0 or not all(map(is_number, betas)):
            raise _error("betas", "a non-empty list of numbers in (0, 1] ending with 1", betas)
        if len(betas) > MAX_RUNGS:
            raise _error("betas", f"at most {MAX_RUNGS} values", f"{len(betas)} values")
        for i, b in enumerate(betas):
            if not (math.isfinite(b) and 0.0 < b <= 1.0):
                raise _error(f"betas[{i}]", "a number in (0, 1]", b)
            if b < MIN_BETA:
                raise _error(f"betas[{i}]", f"a number in [{MIN_BETA:g}, 1]", b)
        for i in range(1, len(betas)):
            if not betas[i] > betas[i - 1] + BETA_ATOL:
                raise ConfigError(
                    f"{_SECTION} betas: expected strictly increasing values, got "
                    f"betas[{i - 1}] = {betas[i - 1]} followed by betas[{i}] = {betas[i]}"
                )
            if betas[i] - betas[i - 1] < MIN_STEP:
                raise ConfigError(
                    f"{_SECTION} betas: expected values at least {MIN_STEP:g} apart, got "
                    f"betas[{i - 1}] = {betas[i - 1]} followed by betas[{i}] = {betas[i]}"
                )
        if betas[-1] != 1.0:
            raise _error("betas", "a last value of 1 (the target beta)", betas[-1])

    def ladder(self) -> tuple[float, ...]:
        return self.betas

    def first_beta(self) -> float:
        return self.betas[0]

    def next_beta(self, beta: float, energies: Float[np.ndarray, " N"] | None) -> float | None:
        del energies
        return _next_on_ladder(self.betas, beta)
