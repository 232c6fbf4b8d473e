"""The refit of a learned q(Y|X) after the ladder (``[training] refit_updates``): q(X) held
fixed, q(Y|X) trained alone at beta = 1 on the importance-weighted bound
(:func:`coarseflow.objectives.conditional_importance_weighted`), with an Adam state of its own
at ``refit_learning_rate``.

Why after the ladder and apart from it: along the ladder q(Y|X) learns by a reverse KL, which is
mode-seeking and leaves its tails too light for importance weights; the bound is mass-covering,
but at the ladder's learning rate it diverged (Session 23). Here, at a tenth of it, with q(X)
fixed and each gradient normalised, it raised the field's alanine dipeptide's one-shot ESS from
0.124 to 0.222 and its AIS-refined ESS from 0.61 to 0.73 (3 seeds each; docs/benchmarks.md,
Session 24).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from coarseflow.objectives import conditional_importance_weighted
from coarseflow.optim import find_skip_clip_state, global_norm, normalize_by_global_norm
from coarseflow.parallel import shard_batch
from coarseflow.training.settings import TrainingSettings

REFIT_KEY = 2**21  # folded into the run's key: the refit's keys, apart from every beta's


class RefitInfo(NamedTuple):
    """What one refit update reports: minus the mean bound over its X (the loss), the
    gradient's norm, whether the guard skipped it, its usable draws (of batch_size), the
    energy + force evaluations it made."""

    loss: jax.Array
    grad_norm: jax.Array
    skipped: jax.Array
    n_used: jax.Array
    energy_evals: jax.Array


def refit_updates(
    params, static, target, training: TrainingSettings, mesh=None
) -> Iterator[tuple[object, RefitInfo]]:
    """After each of ``training.refit_updates`` updates of q(Y|X) at beta = 1: (the model's
    trainable leaves (flow, conditional), its RefitInfo). Each update draws batch_size /
    refit_draws X of q(X) and refit_draws Y of q(Y|X) at each: batch_size energy + force
    evaluations. ``params``, ``static``: the model after the ladder (``training.step.init``).
    The keys derive from ``training.seed`` alone, so a refit repeated gives the same model."""
    flow_params, conditional_params = params
    opt_state = _optimizer(training).init(conditional_params)
    root = jr.fold_in(jr.key(training.seed), REFIT_KEY)
    n = training.refit_updates
    for i in range(n):
        conditional_params, opt_state, info = _refit_update(
            flow_params,
            conditional_params,
            opt_state,
            static,
            jr.fold_in(root, i),
            jnp.asarray(training.lr_factor(i, n)),
            target,
            training,
            mesh,
        )
        yield (flow_params, conditional_params), jax.device_get(info)


def _optimizer(training: TrainingSettings) -> optax.GradientTransformationExtraArgs:
    """Each gradient normalised, then the training's Adam (behind its guard, which then only
    skips non-finite gradients) at refit_learning_rate. The bound's gradient norms spread over
    two decades from update to update (4 X per update at K = 64); Adam's second moment would
    follow the largest and shrink every other step: on alanine dipeptide the one-shot ESS was
    0.04 without the normalisation and 0.13 behind the guard's clip, against 0.20 with it
    (docs/benchmarks.md, Session 24)."""
    return optax.chain(
        optax.with_extra_args_support(normalize_by_global_norm()),
        training.optimizer(training.refit_learning_rate),
    )


@eqx.filter_jit
def _refit_update(flow_params, params, opt_state, static, key, lr_factor, target, training, mesh):
    """One Adam step of q(Y|X)'s trainable leaves ``params`` on the bound at beta = 1."""
    flow, _ = eqx.combine((flow_params, params), static)
    draws = training.refit_draws
    X = jax.lax.stop_gradient(flow.sample(jr.fold_in(key, 0), (training.batch_size // draws,)))
    X = shard_batch(jnp.repeat(X, draws, axis=0), mesh)  # the bound reads every draws-th row
    beta = jnp.asarray(1.0, X.dtype)

    def loss(p):
        _, conditional = eqx.combine((flow_params, p), static)
        value, ok, evals = conditional_importance_weighted(
            conditional, jr.fold_in(key, 1), target, X, beta, draws, training.force_clip
        )
        return value, (jnp.sum(ok), evals)

    (value, (n_used, evals)), grads = eqx.filter_value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = _optimizer(training).update(grads, opt_state, params, lr_factor=lr_factor)
    skipped = find_skip_clip_state(opt_state).last_skipped
    info = RefitInfo(value, global_norm(grads), skipped, n_used, evals)
    return eqx.apply_updates(params, updates), opt_state, info
