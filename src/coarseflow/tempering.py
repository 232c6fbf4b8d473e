"""Tempering schedules: the ladder beta_0 < beta_1 < ... < beta_K = 1 (METHOD.md section 5).

A schedule is a typed, immutable equinox Module with two methods:

* ``first_beta()``: where training starts;
* ``next_beta(beta, energies)``: the rung after ``beta``, or ``None`` once ``beta == 1``.

``energies`` are the reduced energies u(x_i), shape (N,), of all-atom samples drawn from the
current model at ``beta`` (so approximately x_i ~ p_beta ∝ exp(-beta u)). The fixed ladders
(``Linear``, ``Geometric``, ``Explicit``) ignore them; ``Adaptive`` uses them to choose the step.

Adaptive step (Bilionis and Koutsourelakis 2012). With x_i ~ p_beta and delta = beta' - beta,

    KL(p_beta || p_beta') = E_beta[log p_beta - log p_beta']
                          = E_beta[-beta u + beta' u] + log Z_beta' - log Z_beta
                          = delta E_beta[u] + log E_beta[exp(-delta u)],

because Z_beta' / Z_beta = E_beta[exp(-delta u)]. The Monte Carlo estimate replaces both
expectations by sample means:

    KL_hat(delta) = delta mean(u) + log mean(exp(-delta u)) = log mean(exp(-delta (u - mean(u)))),

which is computed in the last (shift-invariant, overflow-free) form. It is >= 0 by Jensen
(log mean exp(v) >= mean(v) = 0), zero at delta = 0, and nondecreasing in delta: it is the
empirical cumulant generating function of -(u - mean u), a convex function with zero slope at 0.
The incremental importance weights w_i ∝ exp(-delta u_i) give the ESS fraction

    ess_hat(delta) = (sum w)^2 / (N sum w^2) = exp(2 K(delta) - K(2 delta)) in (0, 1],

with K the same cumulant generating function; d/d delta log ess_hat = 2 K'(delta) - 2 K'(2 delta)
<= 0 by convexity, so it is nonincreasing in delta. Both criteria are therefore monotonic and the
largest admissible delta is found by bisection.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import Float

from coarseflow.checks import fail, is_int, is_number, show
from coarseflow.errors import ConfigError

__all__ = [
    "AbstractSchedule",
    "Adaptive",
    "Explicit",
    "Geometric",
    "Linear",
    "estimate_kl_increase",
    "incremental_ess_fraction",
    "schedule_from_config",
    "schedule_to_config",
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


def _finite_energies(energies: Any) -> np.ndarray:
    u = np.asarray(energies, dtype=np.float64).reshape(-1)
    return u[np.isfinite(u)]


def _log_mean_exp(v: np.ndarray) -> float:
    m = float(np.max(v))
    return m + float(np.log(np.mean(np.exp(v - m))))


def estimate_kl_increase(energies: Float[np.ndarray, " N"], delta: float) -> float:
    """KL_hat(p_beta || p_{beta + delta}) = delta mean(u) + log mean exp(-delta u) >= 0.

    ``energies`` are u(x_i) with x_i ~ p_beta; non-finite values are dropped. NaN if fewer
    than one finite energy remains.
    """
    u = _finite_energies(energies)
    if u.size == 0:
        return float("nan")
    kl = _log_mean_exp(-float(delta) * (u - np.mean(u)))
    return max(kl, 0.0)  # >= 0 exactly; clamp rounding at delta ~ 0


def incremental_ess_fraction(energies: Float[np.ndarray, " N"], delta: float) -> float:
    """ESS / N of the weights w_i ∝ exp(-delta u_i) from p_beta to p_{beta + delta}, in (0, 1].

    Non-finite energies are dropped; NaN if none remains.
    """
    u = _finite_energies(energies)
    if u.size == 0:
        return float("nan")
    # centred at the minimum, not the mean: one clash (u ~ 1e20) in the mean would leave the
    # other energies' differences below float64 resolution and make every weight equal
    v = -float(delta) * (u - np.min(u))
    log_frac = 2.0 * _log_mean_exp(v) - _log_mean_exp(2.0 * v)
    return min(math.exp(log_frac), 1.0)


class Adaptive(AbstractSchedule):
    """Choose each step from samples of the current model (Bilionis and Koutsourelakis 2012).

    ``next_beta(beta, energies)`` returns beta + delta with delta the largest value in
    [min_step, min(max_step, 1 - beta)] such that the estimated KL(p_beta || p_{beta+delta})
    is <= ``max_kl_increase`` and the incremental ESS fraction is >= ``min_ess_fraction``
    (each criterion only if set; at least one must be). If even ``min_step`` violates them,
    ``min_step`` is taken anyway (beta always increases); near 1 the step is cut to land
    exactly on 1. NaN / inf energies are dropped (a sample the model or the force field could
    not score says nothing about the step); with fewer than 2 finite energies the step is
    ``min_step``. See the module docstring for the estimators.
    """

    beta0: float = 0.01
    max_kl_increase: float | None = 0.1
    min_ess_fraction: float | None = None
    min_step: float = 1e-4
    max_step: float = 0.5

    def __check_init__(self):
        _check_beta0(self.beta0)
        kl, ess = self.max_kl_increase, self.min_ess_fraction
        if kl is not None and not (is_number(kl) and 0.0 < float(kl) < math.inf):
            raise _error("max_kl_increase", "a finite number > 0 (or unset)", kl)
        if ess is not None:
            _check_open_unit("min_ess_fraction", ess)
        if kl is None and ess is None:
            raise ConfigError(
                f"{_SECTION} max_kl_increase, min_ess_fraction: expected at least one to be set, "
                "got neither"
            )
        if not (is_number(self.max_step) and 0.0 < float(self.max_step) <= 1.0):
            raise _error("max_step", "a number in (0, 1]", self.max_step)
        if not (is_number(self.min_step) and 0.0 < float(self.min_step) <= float(self.max_step)):
            raise _error(
                "min_step", f"a number in (0, max_step = {show(self.max_step)}]", self.min_step
            )
        if float(self.min_step) < MIN_STEP:
            raise _error("min_step", f"a number >= {MIN_STEP:g}", self.min_step)

    def first_beta(self) -> float:
        return float(self.beta0)

    def _admissible(self, u: np.ndarray, delta: float) -> bool:
        if self.max_kl_increase is not None:
            if not estimate_kl_increase(u, delta) <= float(self.max_kl_increase):
                return False
        if self.min_ess_fraction is not None:
            if not incremental_ess_fraction(u, delta) >= float(self.min_ess_fraction):
                return False
        return True

    def step(self, beta: float, energies: Float[np.ndarray, " N"]) -> float:
        """The chosen increment delta (> 0) from ``beta`` (< 1)."""
        beta = _check_beta(beta)
        hi = min(float(self.max_step), 1.0 - beta)
        lo = min(float(self.min_step), hi)
        u = _finite_energies(energies)
        if u.size < 2 or not self._admissible(u, lo):
            return lo
        if self._admissible(u, hi):
            return hi
        # Invariant: lo admissible, hi not. Both criteria are monotonic in delta.
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if self._admissible(u, mid):
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-10 * hi:
                break
        return lo

    def next_beta(self, beta: float, energies: Float[np.ndarray, " N"] | None) -> float | None:
        beta = _check_beta(beta)
        if beta >= 1.0 - BETA_ATOL:
            return None
        if energies is None:
            raise ValueError("Adaptive.next_beta needs the energies of samples at the current beta")
        new = beta + self.step(beta, energies)
        return 1.0 if new >= 1.0 - BETA_ATOL else new


# ----------------------------------------------------------------------------- config


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
