"""ForceField: the sum of pure-JAX energy terms, one configuration in, kJ/mol out."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from coarseflow.forcefield.terms import AbstractTerm


class ForceField(eqx.Module):
    """A classical potential U(positions) in kJ/mol for positions (n_atoms, 3) in nm.

    Built from an OpenMM System by ``forcefield_from_system``. Pure, jit-able, vmap-able and
    differentiable; works under plain ``jax.jit`` (all parameters are jax arrays). The energy
    has the dtype of the positions. Forces are ``-jax.grad(ff.energy)(positions)``.
    """

    terms: tuple[AbstractTerm, ...]
    n_atoms: int = eqx.field(static=True)

    # Hash by identity: the structural hash of an equinox Module fails on its arrays, and
    # jax.jit hashes the function it wraps, so jax.jit(ff.energy) would raise without this.
    def __hash__(self) -> int:
        return id(self)

    def __check_init__(self):
        names = [term.name for term in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"ForceField: each term kind may appear once, got {names}")

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(term.name for term in self.terms)

    def _check(self, positions) -> None:
        if positions.shape != (self.n_atoms, 3):
            raise ValueError(
                f"ForceField: expected positions of shape ({self.n_atoms}, 3) in nm, "
                f"got {positions.shape}; batch with jax.vmap"
            )

    def term_energies(self, positions: Float[Array, "n_atoms 3"]) -> dict[str, Array]:
        """Energy of each term in kJ/mol, keyed by term name ('bonds', ..., 'gbsa')."""
        self._check(positions)
        return {term.name: term.energy(positions) for term in self.terms}

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        """Total potential energy in kJ/mol (scalar) of positions (n_atoms, 3) in nm."""
        self._check(positions)
        total = jnp.zeros((), positions.dtype)
        for term in self.terms:
            total = total + term.energy(positions)
        return total
