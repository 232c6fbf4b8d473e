"""Langevin dynamics of one walker, in pure JAX: the all-atom reference's MD step
(:mod:`coarseflow.samplers.replica_exchange` runs it on every walker of its ladder).

Units (OpenMM's): positions in nm, velocities in nm/ps, time in ps, masses in amu (g/mol),
energies and k_B T in kJ/mol, forces (-dU/dx) in kJ/mol/nm. Since 1 kJ/mol = 1 amu nm^2/ps^2,
the acceleration F / m comes out in nm/ps^2 with no conversion factor.

* :func:`baoab_step`: one step of underdamped Langevin dynamics with the B-A-O-A-B splitting
  (Leimkuhler and Matthews 2013) of :mod:`coarseflow.samplers.langevin`, in these units: half
  kick, half drift, exact Ornstein-Uhlenbeck velocity update, half drift, new force, half kick.
  One energy+force evaluation per step. It samples exp(-U / k_B T) up to an O(dt^2) bias in
  configurational averages, exact for a harmonic potential. A step that lands on a non-finite
  energy or force is undone and the velocities redrawn from Maxwell-Boltzmann (counted in
  ``MDState.n_reverted``).

A walker is one configuration (batched with ``jax.vmap`` by the caller); its positions may have
any shape (``(n_atoms, 3)`` for a molecule, ``(d,)`` for a toy potential) with masses of the
leading shape (``(n_atoms,)`` or ``(d,)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.samplers import langevin

EnergyFn = Callable[[Array], Array]


class MDState(NamedTuple):
    """One walker of Langevin dynamics (batched walkers carry leading axes on every field).

    positions: (*shape) nm; velocities: (*shape) nm/ps; energy: () kJ/mol at positions;
    forces: (*shape) kJ/mol/nm = -dU/dx at positions; n_reverted: () int32, steps undone because
    they reached a non-finite energy or force.
    """

    positions: Array
    velocities: Array
    energy: Array
    forces: Array
    n_reverted: Array


def _broadcast_masses(masses: Array, positions: Array) -> Array:
    """masses (*lead) -> (*lead, 1, ...) broadcastable against positions (*shape)."""
    masses = jnp.asarray(masses, positions.dtype)
    return masses.reshape(masses.shape + (1,) * (positions.ndim - masses.ndim))


def maxwell_boltzmann(key: PRNGKeyArray, masses: Float[Array, "*lead"], kT, like: Array) -> Array:
    """Velocities (like.shape) in nm/ps drawn from N(0, kT / m); kT () in kJ/mol, m in amu."""
    m = _broadcast_masses(masses, like)
    noise = jax.random.normal(key, like.shape, like.dtype)
    return noise * jnp.sqrt(jnp.asarray(kT, like.dtype) / m)


def _energy_and_forces(energy_fn: EnergyFn, positions: Array) -> tuple[Array, Array]:
    energy, grad = jax.value_and_grad(energy_fn)(positions)
    return energy, -grad


def md_init(energy_fn: EnergyFn, positions: Array, velocities: Array) -> MDState:
    """State of one walker at ``positions`` (nm) with ``velocities`` (nm/ps); one evaluation."""
    energy, forces = _energy_and_forces(energy_fn, positions)
    return MDState(positions, velocities, energy, forces, jnp.zeros((), jnp.int32))


def baoab_step(
    energy_fn: EnergyFn,
    state: MDState,
    key: PRNGKeyArray,
    *,
    masses: Array,
    kT,
    time_step: float,
    friction: float,
) -> MDState:
    """One BAOAB Langevin step of one walker (:func:`coarseflow.samplers.langevin.baoab_step`).

    energy_fn: positions (*shape) nm -> U () kJ/mol; masses (*lead) amu; kT () kJ/mol;
    time_step in ps; friction in 1/ps. One energy+force evaluation. A step that reaches a
    non-finite energy or force is undone, the velocities redrawn and ``n_reverted`` counts it.
    """
    dtype = state.positions.dtype
    m = _broadcast_masses(masses, state.positions)

    def accelerate(x):
        energy, forces = _energy_and_forces(energy_fn, x)
        return energy, forces / m, forces

    start = langevin.BAOABState(
        state.positions, state.velocities, state.energy, state.forces / m, state.forces
    )
    new, ok = langevin.baoab_step(
        key,
        start,
        accelerate,
        dt=jnp.asarray(time_step, dtype),
        friction=jnp.asarray(friction, dtype),
        sigma=jnp.sqrt(jnp.asarray(kT, dtype) / m),
    )
    return MDState(
        new.x, new.v, new.energy, new.aux, state.n_reverted + jnp.where(ok, 0, 1).astype(jnp.int32)
    )


__all__ = ["MDState", "baoab_step", "maxwell_boltzmann", "md_init"]
