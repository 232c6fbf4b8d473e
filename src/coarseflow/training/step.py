"""One update as a pure function: ``init`` / ``update_step`` over a TrainState (the optax /
blackjax pattern): fab's AIS batch, the objective's gradient, the forward term, the optimiser's
step; and the steering of fab's MALA step size between updates."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh

from coarseflow.fab import (
    FabBatch,
    ReplayBuffer,
    empty_buffer,
    latent_ais,
    replay_add,
    replay_draw,
    replay_update,
)
from coarseflow.model.flow import sample_with_log_det, split_trainable
from coarseflow.objectives import clip_forces, joint_forward_kl_loss
from coarseflow.optim import any_skipped, global_norm
from coarseflow.parallel import shard_batch
from coarseflow.predict.settings import PredictionSettings
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.samplers.force import control_variate_forces
from coarseflow.training.losses import (
    _batch_log_weights,
    _Fixed,
    _loss,
    _normalised,
    chain_states,
)
from coarseflow.training.settings import TrainingSettings


class StepInfo(NamedTuple):
    """What one update reports (loss, gradient norm, skipped, samples used, acceptance, mean
    energy, batch ESS, chain heating, energy evaluations); metrics.jsonl's lines are made from
    it, with step, beta, lr and wall_time added."""

    loss: jax.Array
    grad_norm: jax.Array
    skipped: jax.Array
    n_used: jax.Array  # samples with a finite mean force
    acceptance: jax.Array
    mean_energy: jax.Array  # mean reduced energy u of the last chain states (not times beta)
    batch_ess: jax.Array  # ESS fraction of the batch's importance weights (NaN if not computed)
    # median of MeanForce.heating over the batch (kT; NaN if n_keep < 2): the median, because
    # a sample in a steric clash (u ~ 1e18) would swamp a mean
    chain_heating: jax.Array
    energy_evals: jax.Array  # energy + gradient evaluations this update made (chains, samples)


class TrainState(NamedTuple):
    """What one update carries to the next (a pytree): the trainable leaves of the model
    (flow, conditional), the optimiser's state, fab's replay buffer (None without it) and the
    moving average of the parameters (None without ``average_decay``). The last two start
    afresh at every beta (:func:`start_beta`), so a checkpoint needs only the first two.
    :func:`init` makes it, :func:`update_step` advances it."""

    params: object
    opt_state: object
    buffer: ReplayBuffer | None = None
    average: object | None = None


class UpdateSettings(NamedTuple):
    """The settings an update reads (static: hashable frozen dataclasses), and the devices'
    mesh that its batch is split over (:mod:`coarseflow.parallel`; None: one device)."""

    training: TrainingSettings
    chains: ChainSettings
    prediction: PredictionSettings = PredictionSettings()
    mesh: Mesh | None = None


def init(model, training: TrainingSettings) -> tuple[TrainState, object]:
    """(the first TrainState, the model's fixed part) of ``model`` = (flow, conditional), the
    conditional None with the chains: ``eqx.combine(state.params, static)`` is the model."""
    params, static = split_trainable(model)
    return TrainState(params, training.optimizer().init(params)), static


def start_beta(state: TrainState, target, training: TrainingSettings) -> TrainState:
    """``state`` at the start of a beta: fab's replay buffer emptied (the old end points'
    weights were toward another p_beta) and the parameters' average started at the
    parameters, each where ``training`` has one."""
    buffer, average = None, None
    if training.fab_buffer_size:
        dtype = jnp.result_type(float)
        buffer = empty_buffer(
            training.fab_buffer_size, target.partition.n_x, target.partition.n_y, dtype
        )
    if training.average_decay > 0:
        average = state.params
    return state._replace(buffer=buffer, average=average)


def end_beta(state: TrainState) -> TrainState:
    """``state`` at the end of a beta, as a checkpoint holds it: the parameters replaced by
    their average (where there is one), without the buffer and the average."""
    params = state.params if state.average is None else state.average
    return TrainState(params, state.opt_state)


def update_step(
    state: TrainState,
    static,
    key,
    beta,
    lr_factor,
    fab_step,
    target,
    settings: UpdateSettings,
    refresh: bool = True,
) -> tuple[TrainState, StepInfo]:
    """One update at inverse temperature ``beta`` (traced: no recompiling per beta).

    ``static``: the model's fixed part (:func:`init`); ``lr_factor``: the learning rate's
    factor (:meth:`TrainingSettings.lr_factor`); ``fab_step``: the fab objective's MALA step
    size (traced; ignored by the other objectives); ``refresh`` (static): with fab's replay
    buffer, whether this update makes a new AIS batch (without it, every update does).

    Up to three compiled programs in a row: fab's AIS batch (fab, when one is made), the
    objective's gradient, the forward term's on the joint (joint / hybrid with
    forward_kl_weight > 0); then the optimiser's step. As one program, the gradient and the
    forward term sometimes never returned on the CPU (jaxlib 0.10.2, alanine dipeptide at
    batch >= 128: docs/benchmarks.md, Session 12); as separate programs they did.
    """
    training = settings.training
    fab = None
    if training.objective == "fab" and (state.buffer is None or refresh):
        fab = _fab_batch(state.params, static, key, beta, fab_step, target, training, settings.mesh)
    grads, loss, info, buffer, samples, log_w = _gradients(
        state, static, key, beta, fab, target, settings
    )
    if samples is not None and training.forward_kl_weight > 0:
        value, forward = _joint_forward(state.params, static, samples, log_w, beta, target)
        lam = training.forward_kl_weight
        grads = jax.tree.map(lambda g, f: g + lam * f, grads, forward)
        loss = loss + lam * value
    return _apply(state._replace(buffer=buffer), grads, loss, info, lr_factor, training)


@eqx.filter_jit
def _joint_forward(params, static, samples, log_w, beta, target):
    """(value, gradient) of the joint forward KL term on the update's samples (X, Y) with
    their log-weights (S,) (:func:`coarseflow.objectives.joint_forward_kl_loss`)."""
    weights, _ = _normalised(log_w)

    def loss(p):
        flow, conditional = eqx.combine(p, static)
        return joint_forward_kl_loss(flow, conditional, target, *samples, beta, weights)

    return eqx.filter_value_and_grad(loss)(params)


@eqx.filter_jit
def _apply(state: TrainState, grads, loss, info: StepInfo, lr_factor, training):
    """The optimiser's step with ``grads``; ``info`` completed with the loss, gradient norm
    and whether the guard skipped it."""
    updates, opt_state = training.optimizer().update(
        grads, state.opt_state, state.params, lr_factor=lr_factor
    )
    params = eqx.apply_updates(state.params, updates)
    average = state.average
    if average is not None:
        d = training.average_decay
        average = jax.tree.map(lambda a, p: d * a + (1.0 - d) * p, average, params)
    info = info._replace(
        loss=loss,
        grad_norm=global_norm(grads),
        skipped=any_skipped(opt_state),
    )
    return TrainState(params, opt_state, state.buffer, average), info


@eqx.filter_jit
def _fab_batch(params, static, key, beta, fab_step, target, training, mesh) -> FabBatch:
    """fab's AIS batch of ``batch_size`` paths from q toward p_beta^2 / q (the same key as
    the update's, folded as before the split), its paths split over ``mesh``."""
    flow, conditional = eqx.combine(params, static)
    S = training.batch_size
    batch = latent_ais(
        flow, conditional, jr.fold_in(key, 5), target, beta, S, training.fab_steps, fab_step, "p2/q"
    )
    return shard_batch(batch, mesh)


@eqx.filter_jit
def _gradients(state: TrainState, static, key, beta, fab, target, settings):
    """(gradient, loss, StepInfo without loss / grad_norm / skipped, fab's buffer, the
    joint samples (X, Y) or None, their log-weights (S,) or None) of the objective; ``fab``:
    the update's AIS batch (fab; None where the update draws only from the buffer)."""
    training, chains, prediction, mesh = settings
    params, buffer = state.params, state.buffer
    flow, conditional = eqx.combine(params, static)
    S = training.batch_size
    z = shard_batch(flow.base_dist.sample(jr.fold_in(key, 0), (S,)), mesh)
    X, log_det = jax.lax.stop_gradient(sample_with_log_det(flow, z))
    # strongly typed, as the means that replace it: an update with and one without an AIS batch
    # (fab's replay) compile one _apply
    nan = jnp.full((), jnp.nan, X.dtype)
    force, weights, evals = jnp.zeros_like(X), jnp.zeros(S), jnp.asarray(0)
    acceptance, heating, chain_energy = nan, nan, None
    drawn = None
    if training.objective == "fab":
        if fab is not None:
            evals, acceptance = fab.n_evals, jnp.mean(fab.acceptance)
        if buffer is not None:
            buffer = buffer if fab is None else replay_add(buffer, fab)
            drawn = replay_draw(jr.fold_in(key, 6), buffer, S)
    elif training.objective != "joint":
        y0 = None
        if training.objective == "hybrid":  # the chains start from q(Y|X), n_chains per X
            starts = jnp.repeat(X, chains.n_chains, axis=0)
            y0 = conditional.sample_batch(jr.fold_in(key, 3), target, starts, beta).Y
            y0 = jax.lax.stop_gradient(y0.reshape(S, chains.n_chains, -1))
        mf = chain_states(jr.fold_in(key, 1), target, X, beta, chains, y0)
        force = control_variate_forces(mf) if chains.control_variate else mf.force
        force = clip_forces(force, training.force_clip)
        evals = jnp.sum(mf.n_evals)
        acceptance, heating = jnp.mean(mf.acceptance), jnp.nanmedian(mf.heating)
        chain_energy = jax.vmap(target.energy_xy)(X, mf.y_last[:, 0])
    batch_ess = nan
    if training.objective == "mean_force" and training.forward_kl_weight > 0:
        log_w = _batch_log_weights(
            jr.fold_in(key, 2), flow, target, z, X, log_det, beta, prediction
        )
        weights, batch_ess = _normalised(log_w)
    fixed = _Fixed(z, force, weights, fab, buffer, drawn)
    (loss, aux), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(
        params, static, jr.fold_in(key, 4), beta, fixed, target, training
    )
    n_used, log_w, energies, loss_evals, replay_log_q, samples = aux
    if buffer is not None:
        buffer = replay_update(buffer, drawn, replay_log_q)
    if log_w is not None:
        batch_ess = _normalised(log_w)[1]
    energies = chain_energy if chain_energy is not None else energies
    energies = jnp.full(S, jnp.nan) if energies is None else energies
    info = StepInfo(
        loss=nan,
        grad_norm=nan,
        skipped=jnp.asarray(False),
        n_used=n_used,
        acceptance=acceptance,
        mean_energy=jnp.nanmean(jnp.where(jnp.isfinite(energies), energies, jnp.nan)),
        batch_ess=batch_ess,
        chain_heating=heating,
        energy_evals=evals + loss_evals,
    )
    return grads, loss, info, buffer, samples, log_w


FAB_ACCEPTANCE = 0.6  # the MALA acceptance the fab step size is steered to
FAB_ADAPT = 0.2  # gain of the steering: log step += FAB_ADAPT * (acceptance - FAB_ACCEPTANCE)


def adapt_fab_step(step: float, acceptance: float) -> float:
    """The fab objective's next MALA step size after an update whose mean acceptance was
    ``acceptance``: steered toward FAB_ACCEPTANCE, as q (and so the latent target) changes."""
    if not np.isfinite(acceptance):
        return step
    return float(step * np.exp(FAB_ADAPT * (acceptance - FAB_ACCEPTANCE)))
