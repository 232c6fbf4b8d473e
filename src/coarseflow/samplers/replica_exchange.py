"""All-atom reference sampling: BAOAB Langevin dynamics and replica exchange, in pure JAX.

Units (OpenMM's): positions in nm, velocities in nm/ps, time in ps, masses in amu (g/mol),
energies and k_B T in kJ/mol, forces (-dU/dx) in kJ/mol/nm. Since 1 kJ/mol = 1 amu nm^2/ps^2,
the acceleration F / m comes out in nm/ps^2 with no conversion factor.

* :func:`baoab_step` (:mod:`coarseflow.samplers.molecular_dynamics`): one BAOAB Langevin step
  of one walker in these units.
* :func:`exchange` (:mod:`coarseflow.samplers.replica_swap`): one round of replica-exchange swap
  attempts between neighbouring rungs of a temperature ladder, independently for every chain.
* :func:`run_replica_exchange`: R rungs x C chains (walkers laid out as (R, C, ...)), each chain
  an independent replica-exchange simulation across the R rungs; jit-compiled blocks of
  ``lax.scan`` steps driven by one host loop with a tqdm progress bar. Only rung 0 (the lowest,
  target temperature) is recorded, every ``record_every`` steps, through a user ``observe``
  function, so long runs never hold trajectories of positions. R = 1 is plain Langevin dynamics.

Everything per walker is written for one configuration and batched with ``jax.vmap``; a walker's
positions may have any shape (``(n_atoms, 3)`` for a molecule, ``(d,)`` for a toy potential) with
masses of the leading shape (``(n_atoms,)`` or ``(d,)``). Runs unchanged on CPU and GPU.

Several devices (``mesh``, :mod:`coarseflow.parallel`): the chains are independent, so the
walkers are split along their chain axis C (every device holds all R rungs of its chains) and a
swap moves configurations between rungs of one chain, within a device. The random numbers do
not depend on the split, so the run equals one device's up to rounding (the one sum over chains
is the swap acceptance's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.parallel import check_divisible, shard_batch
from coarseflow.samplers.molecular_dynamics import (
    EnergyFn,
    MDState,
    baoab_step,
    maxwell_boltzmann,
    md_init,
)
from coarseflow.samplers.replica_swap import exchange
from coarseflow.units import kT_from_kelvin

ObserveFn = Callable[[Array], Any]


def temperature_ladder(t_min: float, t_max: float, n: int) -> np.ndarray:
    """Geometric temperature ladder (n,) in K from t_min to t_max; [t_min] when n == 1."""
    if n < 1:
        raise ValueError(f"temperature_ladder: n must be >= 1, got {n}")
    if n == 1:
        return np.array([float(t_min)])
    if not 0 < t_min < t_max:
        raise ValueError(f"temperature_ladder: need 0 < t_min < t_max, got {t_min}, {t_max}")
    return t_min * (t_max / t_min) ** (np.arange(n) / (n - 1))


class ReplicaState(NamedTuple):
    """Replica-exchange state of R rungs x C chains.

    md: MDState with fields (R, C, *shape) (energy, n_reverted: (R, C)); rung r holds the
    configurations at temperature ladder[r]. step: () int32 steps done; n_rounds: () int32 swap
    rounds done; accept_sum: (R-1,) summed acceptance probabilities of pair (r, r+1) over chains
    and rounds; attempts: (R-1,) number of attempts of each pair (chains x rounds).
    """

    md: MDState
    step: Array
    n_rounds: Array
    accept_sum: Array
    attempts: Array


def replica_exchange_init(
    energy_fn: EnergyFn,
    positions: Array,
    masses: Array,
    kT: Float[Array, " R"],
    n_chains: int,
    key: PRNGKeyArray,
    mesh: Mesh | None = None,
) -> ReplicaState:
    """Every walker of R = len(kT) rungs x ``n_chains`` chains at ``positions`` (*shape) nm with
    Maxwell-Boltzmann velocities at its rung's kT (kJ/mol). One evaluation per walker. ``mesh``:
    the devices the chains are split over (``n_chains`` a multiple of their number)."""
    positions = jnp.asarray(positions)
    kT = jnp.asarray(kT, positions.dtype)
    n_rungs = kT.shape[0]
    check_divisible(n_chains, mesh, "[reference] n_chains")
    keys = jax.random.split(key, n_rungs * n_chains).reshape(n_rungs, n_chains)

    def one(k, xi, kTi):
        return md_init(energy_fn, xi, maxwell_boltzmann(k, masses, kTi, xi))

    @jax.jit
    def walkers(keys, positions, kT):
        x = jnp.broadcast_to(positions, (n_rungs, n_chains, *positions.shape))
        x = shard_batch(x, mesh, axis=1)
        return shard_batch(jax.vmap(jax.vmap(one, in_axes=(0, 0, None)))(keys, x, kT), mesh, 1)

    md = walkers(keys, positions, kT)
    zeros = jnp.zeros((max(n_rungs - 1, 0),), positions.dtype)
    return ReplicaState(md, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), zeros, zeros)


def make_block(
    energy_fn: EnergyFn,
    observe: ObserveFn,
    *,
    masses: Array,
    kT: Float[Array, " R"],
    time_step: float,
    friction: float,
    exchange_every: int,
    record_every: int,
    n_records: int,
    mesh: Mesh | None = None,
):
    """A jitted ``block(state, key) -> (state, records)``: ``n_records * record_every`` BAOAB steps
    of every walker, a swap round after every ``exchange_every`` steps (parity alternating), and a
    record of rung 0 after every ``record_every`` steps.

    records: ``{"energy": (n_records, C) kJ/mol, **observe}`` where ``observe(positions)`` of one
    configuration returns a dict of arrays, stacked to (n_records, C, ...). ``mesh``: the devices
    the chains (axis C) are split over.
    """
    kT = jnp.asarray(kT)

    def md_step(md: MDState, key):
        n_rungs, n_chains = md.energy.shape
        keys = jax.random.split(key, n_rungs * n_chains).reshape(n_rungs, n_chains)
        kTs = kT.astype(md.positions.dtype)

        def one(state, k, kTi):
            return baoab_step(
                energy_fn,
                state,
                k,
                masses=masses,
                kT=kTi,
                time_step=time_step,
                friction=friction,
            )

        return shard_batch(jax.vmap(jax.vmap(one, in_axes=(0, 0, None)))(md, keys, kTs), mesh, 1)

    def step(state: ReplicaState, key):
        key_md, key_swap = jax.random.split(key)
        md = md_step(state.md, key_md)
        n = state.step + 1

        def do_swap(args):
            md, n_rounds, accept_sum, attempts = args
            md, prob, tried = exchange(md, key_swap, kT=kT, parity=n_rounds % 2)
            return md, n_rounds + 1, accept_sum + prob, attempts + tried

        args = (md, state.n_rounds, state.accept_sum, state.attempts)
        if kT.shape[0] > 1:
            args = jax.lax.cond(n % exchange_every == 0, do_swap, lambda a: a, args)
        return ReplicaState(args[0], n, *args[1:]), None

    def record(state: ReplicaState, key):
        state, _ = jax.lax.scan(step, state, jax.random.split(key, record_every))
        x0 = state.md.positions[0]  # (C, *shape): rung 0 only
        obs = jax.vmap(observe)(x0)
        return state, {"energy": state.md.energy[0], **obs}

    @jax.jit
    def block(state: ReplicaState, key):
        state = state._replace(md=shard_batch(state.md, mesh, axis=1))
        return jax.lax.scan(record, state, jax.random.split(key, n_records))

    return block


class ReplicaExchangeResult(NamedTuple):
    """Output of :func:`run_replica_exchange`.

    records: dict of numpy arrays (n_frames, C, ...) of rung 0, frame k taken after
    (k + 1) * record_every production steps (``"energy"`` in kJ/mol plus the ``observe`` keys);
    temperatures: (R,) K; swap_acceptance: (R-1,) mean acceptance probability of pair (r, r+1)
    over production; n_energy_evals: energy+force evaluations in total (all walkers, burn-in
    included); wall_time_s: seconds (compilation included); n_reverted: steps undone for a
    non-finite energy, all walkers; state: the final ReplicaState.
    """

    records: dict[str, np.ndarray]
    temperatures: np.ndarray
    swap_acceptance: np.ndarray
    n_energy_evals: int
    wall_time_s: float
    n_reverted: int
    state: ReplicaState


def run_replica_exchange(
    energy_fn: EnergyFn,
    observe: ObserveFn,
    positions: Array,
    masses: Array,
    temperatures: Float[np.ndarray, " R"],
    *,
    n_chains: int,
    time_step: float,
    friction: float,
    n_steps: int,
    burn_in_steps: int,
    record_every: int,
    exchange_every: int,
    key: PRNGKeyArray,
    progress: bool = True,
    records_per_block: int = 100,
    mesh: Mesh | None = None,
) -> ReplicaExchangeResult:
    """Replica exchange over ``temperatures`` (K, increasing; length 1 = plain Langevin).

    energy_fn: positions (*shape) nm -> U () kJ/mol (jit-able, differentiable); observe:
    positions (*shape) -> dict of arrays recorded at rung 0; positions: (*shape) start of every
    walker, in the dtype to simulate in; masses: (*lead) amu. ``burn_in_steps`` (not recorded)
    then ``n_steps`` production steps of every walker; both multiples of ``record_every``.
    Swap acceptance counts production only. The host loop runs jit-compiled blocks of up to
    ``records_per_block`` records (one size for both phases, so one compilation), updating the
    progress bar after each. ``mesh``: the devices the chains are split over
    (:func:`coarseflow.parallel.data_mesh`; ``n_chains`` a multiple of their number, else a
    ConfigError: the run is never changed to fit).
    """
    temperatures = np.asarray(temperatures, dtype=np.float64)
    if np.any(np.diff(temperatures) <= 0):
        raise ValueError(f"temperatures must increase, got {temperatures}")
    for name, value in (("n_steps", n_steps), ("burn_in_steps", burn_in_steps)):
        if value % record_every:
            raise ValueError(
                f"{name} ({value}) must be a multiple of record_every ({record_every})"
            )
    positions = jnp.asarray(positions)
    kT = jnp.asarray(kT_from_kelvin(temperatures), positions.dtype)
    n_walkers = len(temperatures) * n_chains
    start = time.perf_counter()
    key_init, key_burn, key_run = jax.random.split(key, 3)
    state = replica_exchange_init(energy_fn, positions, masses, kT, n_chains, key_init, mesh)

    # one block size for both phases, so that the block compiles once
    n_burn_records, n_records = burn_in_steps // record_every, n_steps // record_every
    common = math.gcd(n_burn_records, n_records)
    size = max(d for d in range(1, min(common, records_per_block) + 1) if common % d == 0)
    block = make_block(
        energy_fn,
        observe,
        masses=masses,
        kT=kT,
        time_step=time_step,
        friction=friction,
        exchange_every=exchange_every,
        record_every=record_every,
        n_records=size,
        mesh=mesh,
    )

    def phase(n_phase_records, key_phase, keep):
        nonlocal state
        for key_b in jax.random.split(key_phase, n_phase_records // size):
            state, records = block(state, key_b)
            if keep:
                out.append(jax.device_get(records))
            else:
                jax.block_until_ready(state.md.energy)
            bar.update(size * record_every)

    from tqdm.auto import tqdm

    out: list[dict] = []
    bar = tqdm(
        total=burn_in_steps + n_steps,
        unit="step",
        disable=not progress,
        desc=f"replica exchange {len(temperatures)}x{n_chains}",
    )
    phase(n_burn_records, key_burn, keep=False)
    state = state._replace(
        accept_sum=jnp.zeros_like(state.accept_sum), attempts=jnp.zeros_like(state.attempts)
    )
    phase(n_records, key_run, keep=True)
    bar.close()
    jax.block_until_ready(state.md.energy)
    wall = time.perf_counter() - start
    records = {k: np.concatenate([o[k] for o in out]) for k in out[0]} if out else {}
    attempts = np.asarray(state.attempts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acceptance = np.where(attempts > 0, np.asarray(state.accept_sum) / attempts, np.nan)
    return ReplicaExchangeResult(
        records=records,
        temperatures=temperatures,
        swap_acceptance=acceptance,
        n_energy_evals=int(n_walkers * (1 + burn_in_steps + n_steps)),
        wall_time_s=float(wall),
        n_reverted=int(np.sum(np.asarray(state.md.n_reverted))),
        state=state,
    )


__all__ = [
    "ReplicaExchangeResult",
    "ReplicaState",
    "make_block",
    "replica_exchange_init",
    "run_replica_exchange",
    "temperature_ladder",
]
