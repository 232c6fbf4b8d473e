"""Replica-exchange swaps between the rungs of a temperature ladder, in pure JAX.

* :func:`exchange`: one round of replica-exchange swap attempts between neighbouring rungs of a
  temperature ladder (even pairs (0,1), (2,3), ... or odd pairs (1,2), (3,4), ...), independently
  for every chain. A swap of the configurations at inverse temperatures b_i, b_j with energies
  U_i, U_j is accepted with probability min(1, exp((b_i - b_j)(U_i - U_j))); velocities are
  rescaled by sqrt(T_new / T_old) so that they stay Maxwell-Boltzmann at their new temperature.

Several devices: the chains are independent and a swap moves configurations between rungs of
one chain (a selection along the rungs), so with the walkers split along their chain axis C
nothing moves between devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.samplers.molecular_dynamics import MDState


def exchange(
    md: MDState, key: PRNGKeyArray, *, kT: Float[Array, " R"], parity
) -> tuple[MDState, Float[Array, " R-1"], Float[Array, " R-1"]]:
    """One round of swap attempts between rungs (r, r+1) with r % 2 == parity, every chain.

    md: fields (R, C, *shape); kT (R,) in kJ/mol, increasing. Returns the new state, the
    acceptance probabilities summed over chains (R-1,) and the attempts per pair (R-1,)
    (C for the pairs tried this round, 0 for the others).
    """
    n_rungs, n_chains = md.energy.shape
    dtype = md.positions.dtype
    kT = jnp.asarray(kT, dtype)
    if n_rungs == 1:
        empty = jnp.zeros((0,), dtype)
        return md, empty, empty
    beta = 1.0 / kT
    pair = jnp.arange(n_rungs - 1)
    active = (pair % 2) == parity  # (R-1,)
    log_acc = (beta[:-1, None] - beta[1:, None]) * (md.energy[:-1] - md.energy[1:])  # (R-1, C)
    log_acc = jnp.where(jnp.isfinite(log_acc), log_acc, -jnp.inf)
    prob = jnp.exp(jnp.minimum(log_acc, 0.0))
    u = jax.random.uniform(key, log_acc.shape, dtype)
    accept = active[:, None] & (u < prob)  # (R-1, C)

    # source rung of each destination rung; active pairs never overlap
    up = jnp.concatenate([accept, jnp.zeros((1, n_chains), bool)], axis=0)  # r takes r+1
    down = jnp.concatenate([jnp.zeros((1, n_chains), bool), accept], axis=0)  # r takes r-1

    def take(a):
        """a (R, C, ...) with rung r's entry replaced by its source rung's, chain by chain (a
        selection along the rungs: nothing moves between chains, so nothing between devices
        when the chains are split)."""
        mask = (*a.shape[:2], *(1,) * (a.ndim - 2))
        above = jnp.concatenate([a[1:], a[-1:]], axis=0)  # rung r + 1's (the last: unused)
        below = jnp.concatenate([a[:1], a[:-1]], axis=0)  # rung r - 1's (the first: unused)
        return jnp.where(up.reshape(mask), above, jnp.where(down.reshape(mask), below, a))

    kT_chains = jnp.broadcast_to(kT[:, None], (n_rungs, n_chains))
    scale = jnp.sqrt(kT_chains / take(kT_chains))  # (R, C): sqrt(T_new / T_old)
    velocities = take(md.velocities) * scale.reshape(scale.shape + (1,) * (md.velocities.ndim - 2))
    new = MDState(
        positions=take(md.positions),
        velocities=velocities,
        energy=take(md.energy),
        forces=take(md.forces),
        n_reverted=md.n_reverted,  # counts stay with the rung
    )
    prob_sum = jnp.where(active, prob.sum(axis=1), 0.0)
    attempts = jnp.where(active, n_chains, 0).astype(dtype)
    return new, prob_sum, attempts


__all__ = ["exchange"]
