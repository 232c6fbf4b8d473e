"""The adaptive tempering schedule: each step chosen from samples of the current model.

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

import math
from typing import Any

import numpy as np
from jaxtyping import Float

from coarseflow.checks import is_number, show
from coarseflow.errors import ConfigError
from coarseflow.tempering.schedules import (
    _SECTION,
    BETA_ATOL,
    MIN_STEP,
    AbstractSchedule,
    _check_beta,
    _check_beta0,
    _check_open_unit,
    _error,
)

__all__ = ["Adaptive", "estimate_kl_increase", "incremental_ess_fraction"]


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
