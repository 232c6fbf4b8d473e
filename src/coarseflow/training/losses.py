"""The loss an update differentiates, per objective: the mean-force surrogate of q(X)
(mean_force), the reverse KL of q(X) q(Y|X) (joint), both (hybrid), fab's alpha = 2 loss; with
the chains' mean forces and the batch's importance weights they are computed from."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from coarseflow.fab import FabBatch, ReplayBuffer, alpha2_loss, replay_loss
from coarseflow.model.flow import sample_with_log_det
from coarseflow.objectives import (
    conditional_terms,
    forward_kl_loss,
    joint_terms,
    masked_mean,
    surrogate_loss,
)
from coarseflow.predict.conditional import resolve_conditional, sample_q_y
from coarseflow.predict.settings import PredictionSettings
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.samplers.force import mean_force
from coarseflow.targets.base import AbstractTarget
from coarseflow.training.settings import TrainingSettings


def chain_states(key, target: AbstractTarget, X, beta, chains: ChainSettings, y0=None):
    """Mean forces for a batch X (S, n_x): MeanForce with leading batch axis. ``y0``: starting
    states (S, n_y) or (S, n_chains, n_y); default the target's ``y_init``."""
    keys = jr.split(key, X.shape[0])
    y0 = jax.vmap(target.y_init)(X) if y0 is None else y0
    mass = target.y_mass()

    def one(k, x, y):
        return mean_force(k, target.energy_xy, x, beta, y, chains, mass)

    return jax.vmap(one)(keys, X, y0)


def _batch_log_weights(key, flow, target, z, X, log_det, beta, prediction: PredictionSettings):
    """Log importance weights (S,) of x = (X, Y), Y ~ q(Y|X), against p_beta."""
    conditional = resolve_conditional(target, prediction.conditional)
    Y, log_qY, _ = sample_q_y(key, target, X, beta, conditional, prediction)
    log_qX = flow.base_dist.log_prob(z) - log_det
    log_w = -beta * jax.vmap(target.energy_xy)(X, Y) - log_qX - log_qY
    return jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)


def _normalised(log_w):
    """Self-normalised weights (S,) (zero where not finite) and their ESS fraction ()."""
    weights = jax.nn.softmax(log_w)
    weights = jnp.where(jnp.isfinite(weights), weights, 0.0)
    return weights, 1.0 / jnp.sum(weights**2) / log_w.shape[0]


class _Fixed(NamedTuple):
    """What one update holds fixed while differentiating (computed outside the gradient)."""

    z: jax.Array  # (S, n_x) base draws
    force: jax.Array  # (S, n_x) mean force (mean_force, hybrid); zeros for joint
    weights: jax.Array  # (S,) forward-term weights of mean_force (else recomputed inside)
    fab: FabBatch | None = None  # the AIS end points of fab (without the replay buffer)
    buffer: ReplayBuffer | None = None  # fab's replay buffer, and the entries drawn from it
    drawn: jax.Array | None = None


class _Aux(NamedTuple):
    """What the loss reports beside its value: samples used, the batch's log-weights (S,)
    and energies (S,) (None where the objective has none), evaluations made inside the
    loss, and the log q of the replay entries drawn (fab with the buffer; else None)."""

    n_used: jax.Array
    log_weights: jax.Array | None
    energies: jax.Array | None
    evals: jax.Array
    replay_log_q: jax.Array | None = None
    samples: tuple[jax.Array, jax.Array] | None = None  # (X, Y) of joint / hybrid, fixed


def _loss(params, static, key, beta, fixed: _Fixed, target, training: TrainingSettings):
    """(loss, (n_used, log_weights (S,) or None, energies (S,) or None, evals)) of the objective.

    mean_force: the paper's surrogate for q(X); joint: the reverse KL of q(X) q(Y|X);
    hybrid: the surrogate for q(X) plus the conditional reverse KL for q(Y|X) at the same X.
    Their forward term (``forward_kl_weight``) is not part of it:
    :func:`coarseflow.training.step._joint_forward`.
    """
    flow, conditional = eqx.combine(params, static)
    lam = training.forward_kl_weight
    if training.objective == "fab":
        return _fab_loss(flow, conditional, key, beta, fixed, target, training)
    if training.objective == "mean_force":
        value, n_used = surrogate_loss(params[0], static[0], fixed.z, fixed.force)
        if lam > 0:
            value = value + lam * forward_kl_loss(
                params[0], static[0], sample_with_log_det(flow, fixed.z)[0], fixed.weights
            )
        return value, _Aux(n_used, None, None, jnp.asarray(0))
    if training.objective == "joint":
        terms = joint_terms(flow, conditional, key, target, fixed.z, beta, training.force_clip)
        value, n_used, log_w = (
            masked_mean(terms.surrogate, terms.ok),
            jnp.sum(terms.ok),
            terms.log_weights,
        )
    else:  # hybrid
        value, n_used = surrogate_loss(params[0], static[0], fixed.z, fixed.force)
        X = jax.lax.stop_gradient(sample_with_log_det(flow, fixed.z)[0])
        terms = conditional_terms(conditional, key, target, X, beta, training.force_clip)
        value = value + masked_mean(terms.surrogate, terms.ok)
        n_used = jnp.minimum(n_used, jnp.sum(terms.ok))  # either half starved starves the update
        log_qX = jax.lax.stop_gradient(flow.log_prob(X))
        log_w = jnp.where(terms.ok, terms.log_weights - log_qX, -jnp.inf)
    samples = jax.lax.stop_gradient((terms.X, terms.Y))
    return value, _Aux(n_used, log_w, terms.u, terms.n_evals, samples=samples)


def _fab_loss(flow, conditional, key, beta, fixed: _Fixed, target, training: TrainingSettings):
    """fab's (loss, _Aux): the alpha = 2 loss on the AIS batch or the replay buffer's drawn
    entries; with ``fab_conditional = "reverse_kl"`` its gradient reaches q(X) only and q(Y|X)
    learns by its conditional reverse KL at the same X (one evaluation per entry)."""
    split = training.fab_conditional == "reverse_kl"
    frozen = jax.tree.map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, conditional)
    in_loss = frozen if split else conditional
    batch = fixed.fab  # the AIS batch made this update, if any
    if fixed.buffer is not None:
        value, log_q = replay_loss(flow, in_loss, target, beta, fixed.buffer, fixed.drawn)
        X, n_used = fixed.buffer.X[fixed.drawn], jnp.sum(jnp.isfinite(log_q))
        start = (None, None) if batch is None else (batch.start_log_weights, batch.start_u)
    else:
        value, log_q = alpha2_loss(flow, in_loss, target, beta, batch), None
        X, n_used = batch.X, jnp.sum(jnp.isfinite(batch.log_weights))
        start = (batch.start_log_weights, batch.start_u)
    evals = jnp.asarray(0)
    if split:
        terms = conditional_terms(
            conditional, key, target, jax.lax.stop_gradient(X), beta, training.force_clip
        )
        value, evals = value + masked_mean(terms.surrogate, terms.ok), terms.n_evals
        # q(Y|X) learns only from its valid, finite draws: none of them starves the update
        # (the ladder's guard stops a run that starves on), however healthy fab's half is
        n_used = jnp.minimum(n_used, jnp.sum(terms.ok))
    return value, _Aux(n_used, *start, evals, log_q)
