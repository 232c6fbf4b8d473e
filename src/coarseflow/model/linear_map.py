"""A learnable linear map of atom positions behind the partition (METHOD.md section 2, "Linear
map"; the paper's general case).

The latent configuration R = (R^X, R^Y), the atom positions that q(X) q(Y|X) samples, becomes the
physical one atom by atom,

    r_i = sum_j A_ij R^X_j + sum_k B_ik R^Y_k = sum_j W_ij R_j      (W = [A B], N x N),

the same on x, y and z: the 3N x 3N matrix is W kron I_3. Every row of W sums to 1 (W is
right-stochastic; entries may be negative), so W 1 = 1 and the map commutes with translations
(W (R + 1 t^T) = W R + 1 t^T) and, acting on each component alike, with rotations
(W (R Q^T) = (W R) Q^T). Parameterised as

    W = I + E P,    P = I - 1 1^T / N,

so the rows sum to 1 for every E (P 1 = 0), every right-stochastic W is reached (E = W - I), and
E = 0, the start, is exactly the identity: the plain partition. E's component along 1^T changes
nothing and its gradient there is zero, so it never moves. log|det(W kron I_3)| = 3 log|det W|.

What W means for a target, and the density on the target's own coordinates, is the target's to
say (a molecule: ``Molecule.mapped_coordinates``, which also moves W R back into the gauge frame).
The model carries the map in its learned conditional (``LearnedConditional.linear_map``, None
without it); the functions below take the map or None (the plain partition: x = (X, Y)).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from coarseflow.errors import ConfigError


class LinearMap(eqx.Module):
    """r = W R on positions (..., N, 3): W = I + E (I - 1 1^T / N), rows summing to 1.

    ``mixing``: E (N, N), dimensionless; zero (the identity map) unless given.
    """

    mixing: Float[Array, "N N"]

    def __init__(self, n_atoms: int, mixing: Float[Array, "N N"] | None = None):
        n = int(n_atoms)
        if n < 1:
            raise ConfigError(f"linear map: expected at least one atom, got n_atoms = {n_atoms!r}")
        self.mixing = jnp.zeros((n, n)) if mixing is None else jnp.asarray(mixing, dtype=float)

    def __check_init__(self):
        if self.mixing.ndim != 2 or self.mixing.shape[0] != self.mixing.shape[1]:
            raise ConfigError(
                f"linear map: mixing must be a square (N, N) matrix, got shape {self.mixing.shape}"
            )

    @property
    def n_atoms(self) -> int:
        return self.mixing.shape[0]

    @property
    def matrix(self) -> Float[Array, "N N"]:
        """W (N, N) = I + E - (E 1) 1^T / N; exactly I where E = 0."""
        E = self.mixing
        return jnp.eye(self.n_atoms, dtype=E.dtype) + E - jnp.mean(E, axis=1, keepdims=True)

    def __call__(self, R: Float[Array, "*batch N 3"]) -> Float[Array, "*batch N 3"]:
        """Physical positions r = W R (..., N, 3) of latent positions R (..., N, 3), in R's unit
        (nm for a molecule)."""
        return jnp.einsum("ij,...jk->...ik", self.matrix, R)

    def inverse(self, r: Float[Array, "*batch N 3"]) -> Float[Array, "*batch N 3"]:
        """Latent positions R = W^-1 r (..., N, 3) of physical positions r (..., N, 3)."""
        W = self.matrix
        flat = jnp.moveaxis(r, -2, 0).reshape(self.n_atoms, -1)  # (N, batch * 3)
        R = jnp.linalg.solve(W, flat).reshape((self.n_atoms,) + r.shape[:-2] + r.shape[-1:])
        return jnp.moveaxis(R, 0, -2)

    def log_det(self) -> Float[Array, ""]:
        """log|det(W kron I_3)| = 3 log|det W| (); -inf where W is singular."""
        return 3.0 * jnp.linalg.slogdet(self.matrix)[1]


@runtime_checkable
class MappableTarget(Protocol):
    """A target whose configurations are atoms that a :class:`LinearMap` can mix: x (n,) are
    its free coordinates, n_atoms its atoms (a molecule)."""

    n_atoms: int

    def full_positions(self, x: Array) -> Array:
        """Atom positions (n_atoms, 3) of x (n,)."""
        ...

    def positions_energy(self, positions: Array) -> Array:
        """Reduced energy () of atom positions (n_atoms, 3)."""
        ...

    def mapped_coordinates(self, linear_map: LinearMap, x: Array) -> tuple[Array, Array]:
        """(x' (n,), log|det dx'/dx| ()): the mapped configuration in the target's coordinates."""
        ...

    def unmapped_coordinates(self, linear_map: LinearMap, x: Array) -> Array:
        """The latent x (n,) whose mapped configuration is x (n,): mapped_coordinates' inverse."""
        ...


def check_linear_map(on: bool, objective: str, target, refine_steps: int = 0) -> None:
    """Refuse, with one line, ``[conditional] linear_map = true`` (``on``) where it cannot
    apply: a target without atoms (only a molecule's can be mixed), an objective other than
    "joint" (hybrid and fab train q(Y|X) against the unmapped configuration; mean_force has no
    learned conditional) or prediction's AIS refinement (``refine_steps`` > 0), which does not
    map its samples. Nothing is checked when the map is off."""
    if not on:
        return
    where = "[conditional] linear_map = true"
    if not isinstance(target, MappableTarget):
        raise ConfigError(
            f"{where}: mixes the atoms of a molecule target; {type(target).__name__} has no "
            "atoms (leave it out)"
        )
    if objective != "joint":
        raise ConfigError(
            f"{where}: needs [training] objective = 'joint' (the only one that trains the map "
            f"with q(X) and q(Y|X)), got {objective!r}"
        )
    if refine_steps:
        raise ConfigError(
            f"{where}: [prediction] refine_steps must be 0 (the AIS refinement does not map "
            f"its samples), got {refine_steps!r}"
        )


def model_map(conditional) -> LinearMap | None:
    """The linear map a model's conditional carries; None for none (or no conditional)."""
    return getattr(conditional, "linear_map", None)


def physical(
    linear_map: LinearMap | None, target, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]
) -> tuple[Float[Array, " n"], Float[Array, ""]]:
    """(x (n,), log|det dx/d(X, Y)| ()): the physical configuration of the latent (X, Y) in the
    target's coordinates, so that log q(x) = log q(X) + log q(Y|X) - log|det|. Without a map
    x is (X, Y) merged and the log-det 0."""
    latent_x = target.partition.merge(X, Y)
    if linear_map is None:
        return latent_x, jnp.zeros((), latent_x.dtype)
    return target.mapped_coordinates(linear_map, latent_x)


def latent(linear_map: LinearMap | None, target, x: Float[Array, " n"]) -> tuple[Array, Array]:
    """The latent (X (n_x,), Y (n_y,)) of the physical x (n,): :func:`physical`'s inverse."""
    if linear_map is not None:
        x = target.unmapped_coordinates(linear_map, x)
    return target.partition.split(x)


def positions(
    linear_map: LinearMap, target, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]
) -> Float[Array, "N 3"]:
    """The mapped atom positions W R (N, 3) of the latent (X, Y), R = the target's positions of
    (X, Y); not moved back into the target's gauge (its energy does not see rigid motion)."""
    return linear_map(target.full_positions(target.partition.merge(X, Y)))


def energy(
    linear_map: LinearMap | None, target, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]
) -> Float[Array, ""]:
    """Reduced energy () of the physical configuration of the latent (X, Y):
    ``target.energy_xy(X, Y)`` without a map."""
    if linear_map is None:
        return target.energy_xy(X, Y)
    return target.positions_energy(positions(linear_map, target, X, Y))


def physical_samples(
    conditional, target, X: Float[Array, "S n_x"], Y: Float[Array, "S n_y"]
) -> tuple[Float[Array, "S n"], Float[Array, " S"]]:
    """(x (S, n), log|det| (S,)): :func:`physical` for each latent sample, with the map of the
    model's ``conditional`` (any q(Y|X), or None). Prediction's samples are these x, their
    log q = log q(X) + log q(Y|X) - log|det|."""
    linear_map = model_map(conditional)
    if linear_map is None:  # no vmap: the partition's merge, bit for bit
        x = target.partition.merge(X, Y)
        return x, jnp.zeros(x.shape[:-1], x.dtype)
    return jax.vmap(lambda a, b: physical(linear_map, target, a, b))(X, Y)


def sample_energies(conditional, target, X: Float[Array, "S n_x"], Y: Float[Array, "S n_y"]):
    """Reduced energies (S,) of the physical configurations of latent samples, with the map of
    the model's ``conditional`` (any q(Y|X), or None)."""
    linear_map = model_map(conditional)
    return jax.vmap(lambda a, b: energy(linear_map, target, a, b))(X, Y)
