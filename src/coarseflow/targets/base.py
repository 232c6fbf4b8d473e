"""The Target interface: a reduced energy u(x), its split into X and Y, and optional references."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from coarseflow.partition import Partition


def concrete_beta(beta) -> float:
    """beta as a Python float, for NumPy/SciPy exact references (never under jit)."""
    try:
        b = float(beta)
    except Exception as err:  # a tracer, or something that is not a number
        raise ValueError(
            "beta: the exact references are NumPy/SciPy computations; call them outside jit "
            f"with a concrete positive number, got {beta!r}"
        ) from err
    if not (math.isfinite(b) and b > 0.0):
        raise ValueError(f"beta: expected a positive finite number, got {beta!r}")
    return b


class AbstractTarget(eqx.Module):
    """A Boltzmann target p_beta(x) ∝ exp(-beta u(x)) over x in R^n, split by a Partition.

    Subclasses set ``partition`` and implement ``energy`` (one configuration -> scalar, reduced
    units, i.e. U / k_B T at the target temperature; beta = 1 is the target). ``x_bounds`` is the
    box in which the flow over X lives: it must hold essentially all the mass of p(X).
    """

    partition: eqx.AbstractVar[Partition]

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        raise NotImplementedError

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (n_x,): the box of the flow's support over X."""
        raise NotImplementedError

    def x_bijection(self):
        """An optional fixed flowjax bijection from the flow's box space onto X (n_x,).

        None (the default): the flow's box is X itself. A molecule returns internal coordinates
        -> Cartesian coordinates here, and ``x_bounds`` is then a box of internal coordinates.
        """
        return None

    def x_periodic(self) -> np.ndarray:
        """(n_x,) bool: which coordinates of the flow's box are angles (default: none). The flow's
        base is uniform over them (``FlowSettings.uniform_angles``)."""
        return np.zeros(self.partition.n_x, dtype=bool)

    @property
    def n(self) -> int:
        return self.partition.n

    def y_init(self, X: Float[Array, " n_x"]) -> Float[Array, " n_y"]:
        """A starting point for Y given X (before the warm-start minimisation)."""
        del X
        return jnp.zeros(self.partition.n_y)

    def y_mass(self) -> Float[Array, " n_y"]:
        """Per-coordinate masses for Langevin / HMC on Y (ones unless a target knows better)."""
        return jnp.ones(self.partition.n_y)

    def y_internal(self, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]) -> Float[Array, " n_y"]:
        """Coordinates xi (n_y,) of Y in which p(Y|X) is nearest a Gaussian (default: Y itself).

        The Laplace fit and AIS of :mod:`coarseflow.predict` work in xi. A molecule uses bond
        lengths, angles and dihedrals of its fast atoms. ``y_cartesian`` is the inverse map;
        ``y_periodic`` marks the coordinates (dihedrals) that are angles modulo 2 pi.
        """
        del X
        return Y

    def y_cartesian(
        self, X: Float[Array, " n_x"], xi: Float[Array, " n_y"]
    ) -> tuple[Float[Array, " n_y"], Float[Array, ""]]:
        """(Y (n_y,), log|det dY/dxi|): the inverse of ``y_internal`` (default: identity)."""
        del X
        return xi, jnp.zeros((), xi.dtype)

    def y_periodic(self) -> np.ndarray:
        """(n_y,) bool: which coordinates of ``y_internal`` are angles modulo 2 pi."""
        return np.zeros(self.partition.n_y, dtype=bool)

    def y_symmetry_number(self) -> int:
        """How many relabelings of Y leave u(X, .) unchanged (1: none; 27 for the three methyl
        groups of alanine dipeptide). ``y_in_domain`` selects one of the equivalent copies."""
        return 1

    def y_relabelings(self) -> np.ndarray:
        """(S, n_y) int: permutations sigma of Y's coordinates with u(X, Y[sigma]) = u(X, Y) for
        every X, Y, identity first (S = ``y_symmetry_number()``); a learned q(Y|X) is
        symmetrised over them. Default: the identity alone."""
        return np.arange(self.partition.n_y)[None, :]

    def y_internal_relabelings(self) -> np.ndarray | None:
        """(S, n_y) int: the relabelings acting on the internal coordinates,
        y_internal(X, Y[sigma]) = y_internal(X, Y)[pi] with log|det dY/dxi| unchanged, or None
        where they do not act as permutations of xi. A target that overrides ``y_internal``
        overrides this too; here y_internal is Y itself."""
        return self.y_relabelings()

    def y_in_domain(
        self, X: Float[Array, " n_x"], Y: Float[Array, " n_y"], Y_ref: Float[Array, " n_y"]
    ) -> Array:
        """Whether Y is in the fundamental domain, around Y_ref, of the relabelings counted by
        ``y_symmetry_number``: of the equivalent copies of every Y exactly one is in it, so
        ∫_domain exp(-beta u(X, Y)) dY = Z(X) / y_symmetry_number(), exactly. Default: True."""
        del X, Y, Y_ref
        return jnp.asarray(True)

    def conditional_gaussian(self, X: Float[Array, " n_x"], beta) -> tuple[Array, Array] | None:
        """Exact p_beta(Y|X) as (mean (n_y,), std (n_y,)) when a diagonal Gaussian, else None."""
        del X, beta
        return None

    def energy_xy(self, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]) -> Float[Array, ""]:
        return self.energy(self.partition.merge(X, Y))
