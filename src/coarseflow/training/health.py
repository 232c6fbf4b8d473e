"""Whether training is going anywhere: a target whose energy is not finite where training
starts is refused, chains still heating up are warned about, and training stops itself after
too many skipped or starved updates in a row or a stalled adaptive ladder
(docs/reliability.md)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.targets.base import AbstractTarget
from coarseflow.tempering.adaptive import Adaptive
from coarseflow.tempering.schedules import AbstractSchedule

HEATING_LIMIT = 0.25  # kT; alanine dipeptide runs that drifted heated by ~1 kT (docs/molecules.md)


def heating_warning(beta: float, heating: list[float]) -> str | None:
    """A one-line warning when the chains were still heating up over one beta's updates, else None.

    ``heating``: the updates' ``chain_heating`` (kT). Warns when their mean exceeds HEATING_LIMIT
    and 4 standard errors of the mean: the mean force then came from chains not yet in
    equilibrium, and q drifts towards the wrong free energy.
    """
    values = np.asarray(heating, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(values.size)
    if mean > HEATING_LIMIT and mean > 4.0 * se:
        return (
            f"coarseflow: warning: at beta = {beta:.4g} the chains' reduced energy still "
            f"rose by {mean:.2f} +- {se:.2f} kT over their kept states: the mean force is "
            "biased towards the energy minimum of Y; raise [chains] n_burn"
        )
    return None


def check_energy_finite(flow, target: AbstractTarget, key) -> None:
    """Refuse, with one line, a target whose energy is not finite where training starts."""
    X = flow.sample(key, (8,))
    u = jax.vmap(target.energy_xy)(X, jax.vmap(target.y_init)(X))
    if not bool(jnp.any(jnp.isfinite(u))):
        raise ConfigError(
            f"target energy: not finite at any of 8 starting points (got {u[0]}); "
            "check the energy function and the box [target] bounds"
        )


# When training stops by itself (docs/reliability.md). A run of the shipped configs never comes
# near these: all its updates but the optimiser's first 10 (calibration) are applied, n_used is
# the whole batch (the double well, the mixtures) or nearly, and its adaptive ladders take
# 10-30 betas from 0.01 to 1.
STOP_WINDOW = 50  # consecutive updates that must all be skipped / starved to stop
MIN_USED_FRACTION = 0.1  # an update is starved below this fraction of finite samples (n_used)
LADDER_WINDOW = 5  # the adaptive ladder's last steps judged together
LADDER_PACE_LIMIT = 1000  # stop when, at the largest of those steps, beta = 1 is farther away


class TrainingStopped(ConfigError):
    """Training stopped itself, after saving a checkpoint; the message says why and what to do."""


class Streaks(NamedTuple):
    """Consecutive updates (across betas, carried by checkpoints) that were skipped by the
    gradient guard, and that were starved (n_used < MIN_USED_FRACTION of the batch)."""

    skipped: int = 0
    starved: int = 0

    def after(self, skipped: bool, n_used: int, batch_size: int) -> Streaks:
        starved = n_used < MIN_USED_FRACTION * batch_size
        return Streaks(self.skipped + 1 if skipped else 0, self.starved + 1 if starved else 0)


def stop_reason(
    streaks: Streaks,
    batch_size: int,
    schedule: AbstractSchedule,
    betas: list[float],
    next_beta: float | None,
) -> str | None:
    """Why training should stop now, in words, or None. Judged after each beta's checkpoint.

    ``betas``: the betas reached so far (the last one just checkpointed); ``next_beta``: the
    one the schedule chose next (None: the ladder is done).
    """
    if streaks.starved >= STOP_WINDOW:
        return (
            f"in each of the last {streaks.starved} updates fewer than "
            f"{MIN_USED_FRACTION:.0%} of the {batch_size} samples had a finite energy or "
            "force (n_used in metrics.jsonl): the energy is finite on only a small part of "
            "the box; check the energy function and the [target] bounds"
        )
    if streaks.skipped >= STOP_WINDOW:
        return (
            f"the last {streaks.skipped} updates were all skipped by the gradient guard "
            "(non-finite or exploding gradients; 'skipped' in metrics.jsonl): nothing is "
            "being learned; check [training] learning_rate and forward_kl_weight and the "
            "energy"
        )
    if isinstance(schedule, Adaptive) and next_beta is not None:
        steps = np.diff([*betas, next_beta])[-LADDER_WINDOW:]
        if steps.size == LADDER_WINDOW and (1.0 - next_beta) > LADDER_PACE_LIMIT * steps.max():
            return (
                f"the adaptive ladder's last {LADDER_WINDOW} steps were at most "
                f"{steps.max():.2g}: at that pace beta = 1 is more than "
                f"{LADDER_PACE_LIMIT} betas away (the model's energies vary too widely "
                "for larger steps); raise [tempering] min_step or max_kl_increase, or use "
                "an explicit ladder"
            )
    return None
