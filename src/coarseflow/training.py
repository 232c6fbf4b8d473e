"""Training along the tempering ladder: ``init`` / ``update_step`` over a TrainState (the
optax / blackjax pattern), and ``train``, the ladder walk around them, which reports through
Callbacks (the application layer records metrics and checkpoints:
:mod:`coarseflow.checkpointing`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from coarseflow.errors import ConfigError
from coarseflow.fab import (
    FabBatch,
    ReplayBuffer,
    alpha2_loss,
    empty_buffer,
    latent_ais,
    replay_add,
    replay_draw,
    replay_loss,
    replay_update,
)
from coarseflow.model.flow import sample_with_log_det, split_trainable
from coarseflow.objectives import (
    clip_forces,
    conditional_terms,
    forward_kl_loss,
    joint_forward_kl_loss,
    joint_terms,
    masked_mean,
    surrogate_loss,
)
from coarseflow.optim import adam_with_skip_clip, find_skip_clip_state, global_norm
from coarseflow.parallel import check_divisible, replicate, shard_batch
from coarseflow.predict import PredictionSettings, resolve_conditional, sample_q_y
from coarseflow.samplers.conditional import ChainSettings, control_variate_forces, mean_force
from coarseflow.targets.base import AbstractTarget
from coarseflow.tempering import AbstractSchedule, Adaptive

OBJECTIVES = ("mean_force", "joint", "hybrid", "fab")
FAB_CONDITIONALS = ("alpha2", "reverse_kl")  # what trains q(Y|X) under fab


@dataclass(frozen=True)
class TrainingSettings:
    """How long and how hard to train at each beta.

    ``lr_final_fraction``: the learning rate decays linearly within each beta from
    ``learning_rate`` to ``learning_rate * lr_final_fraction`` (1 keeps it constant). Late in a
    beta the Monte Carlo noise of the mean force, not the bias, dominates the error of each
    update; a smaller step averages it out instead of letting mode weights random-walk.

    ``final_beta_updates`` (default: ``updates_per_beta``): updates at beta = 1, the beta whose
    model is sampled. Along the ladder each beta only has to bring q close enough for the next;
    at beta = 1 the importance weights' spread, and so the ESS, depends on how closely q(X)
    matches p(X). Where the mean force is noisy, more updates there also give the mode weights
    longer to drift (alanine dipeptide on a CPU budget: docs/benchmarks.md).

    ``force_clip``: each sample's mean force is capped at this multiple of the batch's median
    force norm (``objectives.clip_forces``): a steric clash then cannot drown the batch.

    ``forward_kl_weight`` (lambda, default 0: the paper's pure reverse KL) adds
    lambda * KL(p || q), estimated by self-normalised importance weights of the batch's all-atom
    samples (Y from q(Y|X): the target's exact conditional or a Laplace fit, as in [prediction]).
    The reverse KL moves mass between well-separated modes only through the rare samples that
    land between them; with Adam's per-parameter step sizes that weak, noisy signal lets mode
    weights random-walk once modes are sharp. The forward term pulls each mode's weight toward
    its importance-weighted estimate, which stays accurate while the ESS is reasonable.
    With a learned conditional the term is on the joint, with its exact density.

    ``objective``: ``mean_force`` (the paper's: q(X) by the MCMC mean force), ``joint`` (the
    reparameterised reverse KL of q(X) q(Y|X), no chains) or ``hybrid`` (q(X) by the mean
    force of chains started from q(Y|X), q(Y|X) by its conditional reverse KL on the same X).
    ``fab``: the alpha = 2 divergence of q(X) q(Y|X), estimated by AIS from q toward
    p_beta^2 / q (:mod:`coarseflow.fab`; mass-covering), ``fab_steps`` MALA steps of size
    ``fab_step_size`` per path in q's latent space. The last three need a learned
    ``[conditional]``. ``fab_buffer_size`` (0: none) keeps the end points of the last
    fab_buffer_size / batch_size AIS batches of a beta in FAB's prioritised replay buffer
    (:class:`coarseflow.fab.ReplayBuffer`); each update then learns from batch_size entries
    drawn from it, and a new AIS batch is made every ``fab_reuse`` updates: the energy
    evaluations per update fall by that factor. ``fab_conditional``: what trains q(Y|X) under
    fab: "alpha2" (fab's loss on the joint, FAB as published) or "reverse_kl" (fab's loss on
    q(X) only, q(Y|X) by its conditional reverse KL at the end points' X, as in hybrid). On
    alanine dipeptide "alpha2" fits q(Y|X) to the one end point that holds most of the weight
    and diverges (docs/benchmarks.md, Session 13); Y|X is unimodal, so the reverse KL loses
    nothing there.
    """

    batch_size: int = 128
    learning_rate: float = 1e-3
    updates_per_beta: int = 100
    first_beta_updates: int = 500
    final_beta_updates: int | None = None
    lr_final_fraction: float = 0.1
    tempering_samples: int = 512
    forward_kl_weight: float = 0.0
    objective: str = "mean_force"
    force_clip: float = 10.0
    fab_steps: int = 8
    fab_step_size: float = 0.3
    fab_buffer_size: int = 0
    fab_reuse: int = 1
    fab_conditional: str = "alpha2"
    skip_window: int = 50
    skip_factor: float = 10.0
    clip_factor: float = 3.0
    seed: int = 0

    def __post_init__(self):
        from coarseflow import checks

        def key(name):
            return f"[training] {name}"

        for name in (
            "batch_size",
            "updates_per_beta",
            "first_beta_updates",
            "tempering_samples",
            "fab_steps",
            "fab_reuse",
        ):
            checks.integer(key(name), getattr(self, name), 1)
        checks.integer(key("fab_buffer_size"), self.fab_buffer_size, 0)
        if self.fab_buffer_size % self.batch_size:
            raise checks.fail(
                key("fab_buffer_size"),
                f"a multiple of batch_size = {self.batch_size}",
                self.fab_buffer_size,
            )
        if self.fab_buffer_size and self.objective != "fab":
            raise ConfigError(
                "[training] fab_buffer_size: the replay buffer is fab's; "
                f"objective is {self.objective!r} (set it to 0)"
            )
        if self.fab_reuse > 1 and not self.fab_buffer_size:
            raise ConfigError(
                "[training] fab_reuse: reusing AIS batches needs the replay "
                "buffer; set fab_buffer_size (e.g. 8 x batch_size)"
            )
        # the gradient guard's first 10 norms only calibrate it (optim.adam_with_skip_clip)
        checks.integer(key("skip_window"), self.skip_window, 10)
        if self.final_beta_updates is not None:
            checks.integer(key("final_beta_updates"), self.final_beta_updates, 1)
        checks.number(key("learning_rate"), self.learning_rate, 0.0, 1.0)
        checks.number(key("lr_final_fraction"), self.lr_final_fraction, 0.0, 1.0)
        checks.number(key("forward_kl_weight"), self.forward_kl_weight, 0.0, 1e6, low_open=False)
        for name in ("force_clip", "fab_step_size"):
            checks.number(key(name), getattr(self, name), 0.0)
        checks.choice(key("objective"), self.objective, OBJECTIVES)
        checks.choice(key("fab_conditional"), self.fab_conditional, FAB_CONDITIONALS)
        if self.fab_conditional != "alpha2" and self.objective != "fab":
            raise ConfigError(
                f"[training] fab_conditional: says how fab trains q(Y|X); objective is "
                f"{self.objective!r} (leave it out)"
            )
        checks.seed(key("seed"), self.seed)
        if self.objective == "fab" and self.forward_kl_weight > 0:
            raise ConfigError(
                "[training] forward_kl_weight: fab's loss is mass-covering "
                "already and takes no forward term; set it to 0"
            )
        clip = checks.number(key("clip_factor"), self.clip_factor, 1.0)
        if not (checks.is_finite(self.skip_factor) and self.skip_factor > clip):
            raise checks.fail(
                key("skip_factor"), f"a finite number > clip_factor = {clip:g}", self.skip_factor
            )

    def updates_at(self, index: int, beta: float) -> int:
        """Updates at the ``index``-th beta of the ladder, ``beta``."""
        if index == 0:
            return self.first_beta_updates
        if beta >= 1.0 and self.final_beta_updates is not None:
            return self.final_beta_updates
        return self.updates_per_beta

    def optimizer(self) -> optax.GradientTransformationExtraArgs:
        """Adam behind the gradient guard, its steps scaled by the ``lr_factor`` that each
        update passes (the decay within a beta, :func:`lr_factor`)."""
        return optax.chain(
            adam_with_skip_clip(
                self.learning_rate,
                window=self.skip_window,
                skip_factor=self.skip_factor,
                clip_factor=self.clip_factor,
            ),
            scale_by_lr_factor(),
        )

    def lr_factor(self, i: int, n_updates: int) -> float:
        """The learning rate's factor at update ``i`` of a beta's ``n_updates``: linear from 1
        to ``lr_final_fraction``."""
        frac = i / max(n_updates - 1, 1)
        return 1.0 - (1.0 - self.lr_final_fraction) * frac


def scale_by_lr_factor() -> optax.GradientTransformationExtraArgs:
    """Updates times the extra argument ``lr_factor`` (traced: one compile for every factor).
    Stateless, so a checkpoint's optimiser state has the same leaves as without it."""

    def update(updates, state, params=None, *, lr_factor=1.0, **extra_args):
        return jax.tree.map(lambda u: lr_factor * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


METRICS_FLUSH = 25  # updates between writes to metrics.jsonl (resume truncates past the checkpoint)


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
    Their forward term (``forward_kl_weight``) is not part of it: :func:`_joint_forward`.
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
    return value, _Aux(n_used, *start, evals, log_q)


class TrainState(NamedTuple):
    """What one update carries to the next (a pytree): the trainable leaves of the model
    (flow, conditional), the optimiser's state, and fab's replay buffer (None without it;
    emptied at every beta, so a checkpoint needs only the first two). :func:`init` makes it,
    :func:`update_step` advances it."""

    params: object
    opt_state: object
    buffer: ReplayBuffer | None = None


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


def with_empty_buffer(state: TrainState, target, training: TrainingSettings) -> TrainState:
    """``state`` with fab's replay buffer emptied (a new beta: the old end points' weights
    were toward another p_beta), or without one where ``training`` has none."""
    if not training.fab_buffer_size:
        return state
    dtype = jnp.result_type(float)
    return state._replace(
        buffer=empty_buffer(
            training.fab_buffer_size, target.partition.n_x, target.partition.n_y, dtype
        )
    )


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
    info = info._replace(
        loss=loss,
        grad_norm=global_norm(grads),
        skipped=find_skip_clip_state(opt_state).last_skipped,
    )
    return TrainState(params, opt_state, state.buffer), info


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
    params, _, buffer = state
    flow, conditional = eqx.combine(params, static)
    S = training.batch_size
    z = shard_batch(flow.base_dist.sample(jr.fold_in(key, 0), (S,)), mesh)
    X, log_det = jax.lax.stop_gradient(sample_with_log_det(flow, z))
    nan = jnp.asarray(jnp.nan)
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


def _float_or_none(value) -> float | None:
    """JSON-friendly: NaN becomes None."""
    return None if np.isnan(value) else float(value)


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


@eqx.filter_jit
def _energies_of_samples(flow, conditional, key, beta, target, chains, n: int, mesh):
    X = shard_batch(flow.sample(jr.fold_in(key, 0), (n,)), mesh)
    if conditional is not None:
        Y = conditional.sample_batch(jr.fold_in(key, 1), target, X, beta).Y
        return jax.vmap(target.energy_xy)(X, Y), jnp.asarray(n)
    mf = chain_states(jr.fold_in(key, 1), target, X, beta, chains)
    return jax.vmap(target.energy_xy)(X, mf.y_last[:, 0]), jnp.sum(mf.n_evals) + n


def model_energies(
    flow, key, beta, target, chains, n: int, batch_size: int, conditional=None, mesh=None
) -> tuple[np.ndarray, int]:
    """(reduced energies u(X, Y) (n,), energy evaluations made) with X ~ q(X) and Y from the
    learned ``conditional``, or from the conditional chains when it is None; each batch split
    over ``mesh``'s devices."""
    beta = jnp.asarray(beta)  # traced, as in update_step: a float would recompile per beta
    out, evals = [], 0
    for i, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        u, k = _energies_of_samples(
            flow, conditional, jr.fold_in(key, i), beta, target, chains, m, mesh
        )
        out.append(np.asarray(u))
        evals += int(k)
    return np.concatenate(out), evals


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


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained flow q(X), the learned q(Y|X) (None when the
    chains give Y | X) and the betas trained, in order."""

    flow: eqx.Module
    conditional: eqx.Module | None  # the learned q(Y|X), None with the chains
    betas: list[float]


class LadderState(NamedTuple):
    """Where a walk along the ladder stands after a beta: what a checkpoint holds and a resumed
    run starts from (``train(start=...)``).

    ``beta``: the next beta to train (None: the ladder is done), ``index`` its place on the
    ladder; ``step``: updates made; ``betas``: the betas reached; ``energy_evals``: energy +
    gradient evaluations of all updates and ladder samples; ``wall_time``: seconds of training
    (all processes); ``fab_step``: fab's adapted MALA step size; ``streaks``: for stop_reason.
    """

    state: TrainState
    beta: float | None
    index: int = 0
    step: int = 0
    betas: tuple[float, ...] = ()
    energy_evals: int = 0
    wall_time: float = 0.0
    fab_step: float = 0.3
    streaks: Streaks = Streaks()


class Callbacks:
    """What train() reports, for the application layer to record (e.g. a run directory's
    metrics.jsonl and checkpoints: :mod:`coarseflow.checkpointing`). The defaults do nothing."""

    def on_updates(self, records: list[dict]) -> None:
        """Per-update records (step, beta, loss, ...), every METRICS_FLUSH updates and at the
        end of each beta."""

    def on_beta(self, beta: float, ladder: LadderState, summary: dict) -> None:
        """After each beta: ``ladder`` is the state to resume from (its ``beta`` the next one);
        ``summary``: that beta's n_updates, mean_energy, chain_heating."""


def train(
    target: AbstractTarget,
    flow,
    schedule: AbstractSchedule,
    training: TrainingSettings,
    chains: ChainSettings,
    *,
    conditional=None,
    prediction: PredictionSettings = PredictionSettings(),
    start: LadderState | None = None,
    callbacks: Callbacks | None = None,
    progress: bool = True,
    max_betas: int | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train ``flow`` (and a learned ``conditional``) along the ladder of ``schedule``; return
    them with the betas reached.

    ``conditional``: a learned q(Y|X) (:mod:`coarseflow.model.conditional`) trained with the
    flow when ``training.objective`` is joint, hybrid or fab; None for mean_force.
    ``start``: a LadderState to continue from (a checkpoint's; the model's fixed part is taken
    from ``flow`` and ``conditional``), which gives exactly the result of an uninterrupted run:
    the random keys of each beta derive from (seed, index of the beta). ``callbacks`` receive
    the metrics and, after every beta, the state to resume from. ``max_betas`` stops after that
    many betas (for tests and budgets). ``mesh``: the devices every update's batch is split
    over (:func:`coarseflow.parallel.data_mesh`; None: one device). Raises TrainingStopped,
    after that beta's ``on_beta``, when ``stop_reason`` says training is going nowhere.
    """
    if (conditional is None) != (training.objective == "mean_force"):
        raise ConfigError(
            f"[training] objective = {training.objective!r} needs "
            + (
                "a learned [conditional] kind (gaussian or flow)"
                if conditional is None
                else "[conditional] kind = 'chains' "
                "(the learned conditional would not be trained); use 'joint', "
                "'hybrid' or 'fab'"
            )
        )
    check_divisible(training.batch_size, mesh, "[training] batch_size")
    state, static = init((flow, conditional), training)
    if start is None:
        start = LadderState(state, schedule.first_beta(), fab_step=training.fab_step_size)
        check_energy_finite(flow, target, jr.fold_in(jr.key(training.seed), -1 % 2**31))
    # a checkpoint of any device count resumes on this one: its state goes to every device
    start = start._replace(state=replicate(start.state, mesh))
    ladder, callbacks = start, Callbacks() if callbacks is None else callbacks
    settings = UpdateSettings(training, chains, prediction, mesh)
    # the bar's n is the last beta reached (a resumed run starts where it stopped)
    bar = tqdm(
        total=1.0,
        initial=ladder.betas[-1] if ladder.betas else 0.0,
        disable=not progress,
        desc="beta",
        unit="",
        leave=True,
        bar_format="{l_bar}{bar}| beta {n:.4f}/1 [{elapsed}<{remaining}]",
    )
    t0 = time.perf_counter() - ladder.wall_time
    while ladder.beta is not None:
        ladder = _train_beta(ladder, static, target, schedule, settings, callbacks, t0)
        bar.update(ladder.betas[-1] - bar.n)
        reason = stop_reason(
            ladder.streaks, training.batch_size, schedule, list(ladder.betas), ladder.beta
        )
        if reason is not None:  # after on_beta's checkpoint: the user can sample or resume
            bar.close()
            raise TrainingStopped(
                f"training stopped after beta = {ladder.betas[-1]:.6g} (checkpoint saved): {reason}"
            )
        if max_betas is not None and ladder.index >= max_betas:
            break
    bar.close()
    return TrainResult(*eqx.combine(ladder.state.params, static), list(ladder.betas))


def _train_beta(
    ladder: LadderState,
    static,
    target,
    schedule,
    settings: UpdateSettings,
    callbacks: Callbacks,
    t0: float,
) -> LadderState:
    """The updates at ``ladder.beta``, then the ladder's samples there and the next beta."""
    training, chains, _, mesh = settings
    state = with_empty_buffer(ladder.state, target, training)
    beta, index, step = ladder.beta, ladder.index, ladder.step
    evals, fab_step, streaks = ladder.energy_evals, ladder.fab_step, ladder.streaks
    n_updates = training.updates_at(index, beta)
    root_key = jr.key(training.seed)
    beta_key = jr.fold_in(root_key, index)
    records, heating = [], []
    for i in range(n_updates):
        lr_factor = training.lr_factor(i, n_updates)
        state, info = update_step(
            state,
            static,
            jr.fold_in(beta_key, i),
            jnp.asarray(beta),
            jnp.asarray(lr_factor),
            jnp.asarray(fab_step),
            target,
            settings,
            i % training.fab_reuse == 0,
        )
        info = jax.device_get(info)
        if training.objective == "fab":
            fab_step = adapt_fab_step(fab_step, float(info.acceptance))
        evals += int(info.energy_evals)
        streaks = streaks.after(bool(info.skipped), int(info.n_used), training.batch_size)
        heating.append(float(info.chain_heating))
        records.append(
            {
                "step": step,
                "beta": float(beta),
                "loss": float(info.loss),
                "grad_norm": float(info.grad_norm),
                "skipped": bool(info.skipped),
                "n_used": int(info.n_used),
                "acceptance": float(info.acceptance),
                "mean_energy": float(info.mean_energy),
                "batch_ess": _float_or_none(info.batch_ess),
                "chain_heating": _float_or_none(info.chain_heating),
                "lr": training.learning_rate * lr_factor,
                "energy_evals": evals,
                "wall_time": time.perf_counter() - t0,
            }
        )
        step += 1
        if len(records) >= METRICS_FLUSH:
            callbacks.on_updates(records)  # visible while a long beta trains
            records = []
    flow, conditional = eqx.combine(state.params, static)
    energies, ladder_evals = model_energies(
        flow,
        jr.fold_in(root_key, 2**20 + index),
        beta,
        target,
        chains,
        training.tempering_samples,
        training.batch_size,
        conditional,
        mesh,
    )
    next_beta = schedule.next_beta(beta, energies)
    ladder = LadderState(
        state._replace(buffer=None),
        next_beta,
        index + 1,
        step,
        (*ladder.betas, float(beta)),
        evals + ladder_evals,
        time.perf_counter() - t0,
        fab_step,
        streaks,
    )
    callbacks.on_updates(records)
    callbacks.on_beta(
        float(beta),
        ladder,
        {
            "n_updates": n_updates,
            "mean_energy": float(np.nanmean(energies)),
            "chain_heating": _finite_mean(heating),
        },
    )
    warning = heating_warning(beta, heating)
    if warning is not None:
        tqdm.write(warning, file=sys.stderr)
    return ladder
