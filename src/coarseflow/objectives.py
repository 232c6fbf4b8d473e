"""The reverse-KL surrogates whose gradients are the training estimators (METHOD.md section 4).

    grad_phi KL(q_phi(X) || p(X)) = E_z[ -grad_phi log|det df/dz| + F(X) . df(z)/dphi ],

with F(X) = E_{Y ~ p(Y|X)}[beta grad_X u(X, Y)] the mean force, estimated by MCMC on Y|X and held
fixed (stop-gradient) while differentiating. log p0(z) does not depend on phi, so it is left out.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from coarseflow.errors import ConfigError
from coarseflow.model.flow import sample_with_log_det
from coarseflow.model.linear_map import latent, model_map, physical, positions


def surrogate_loss(
    params, static, z: Float[Array, "S n_x"], force: Float[Array, "S n_x"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(surrogate value, number of samples used). Samples whose force is not finite are left out.

    Only the gradient with respect to ``params`` is meaningful; the value is logged as a trend.
    """
    flow = eqx.combine(params, static)
    X, log_det = sample_with_log_det(flow, z)
    ok = jnp.all(jnp.isfinite(force), axis=-1)
    force = jnp.where(ok[:, None], jax.lax.stop_gradient(force), 0.0)
    per_sample = -log_det + jnp.sum(force * X, axis=-1)
    n_ok = jnp.sum(ok)
    return jnp.sum(jnp.where(ok, per_sample, 0.0)) / jnp.maximum(n_ok, 1), n_ok


def clip_forces(force: Float[Array, "S n_x"], factor: float) -> Float[Array, "S n_x"]:
    """Each sample's force scaled down to at most ``factor`` x the batch's median force norm.

    A sample in a steric clash (reduced energy ~1e18, as a flow that starts wide proposes) has
    a force ~1e10 times the others'. Unclipped, it alone sets the update's direction, the
    gradient skip/clip of :mod:`coarseflow.optim` then skips or shrinks that update, and the
    rest of the batch teaches nothing. Clipped, it still pushes q out of the clash, with the
    weight of a large force. Only forces beyond ``factor`` x the median change, so for a
    well-behaved target (and factor >> 1) the estimator is unchanged. Non-finite forces pass
    through (``surrogate_loss`` drops them).
    """
    return force * _clip_scale(force, factor)[:, None]


def _clip_scale(force: Float[Array, "S n"], factor: float) -> Float[Array, " S"]:
    """The factor (S,) by which :func:`clip_forces` scales each sample's force."""
    norm = jnp.linalg.norm(force, axis=-1)
    finite = jnp.isfinite(norm)
    cap = factor * jnp.nanmedian(jnp.where(finite, norm, jnp.nan))
    return jnp.where(finite & (norm > cap), cap / jnp.where(finite, norm, 1.0), 1.0)


def forward_kl_loss(params, static, X: Float[Array, "S n_x"], weights: Float[Array, " S"]):
    """-sum_i (w_i - 1/S) log q(X_i): the gradient of KL(p || q), importance-weighted.

    ``X`` (S, n_x) are q's own samples, held fixed, and ``weights`` (S,) their self-normalised
    importance weights (summing to 1). -sum_i w_i grad log q(X_i) estimates grad KL(p || q);
    subtracting (1/S) sum_i grad log q(X_i), whose expectation under q is zero, leaves that
    expectation and removes the noise of q's own score: the gradient is driven by how far the
    weights are from uniform, i.e. by where q and p differ (mode weights above all).
    """
    flow = eqx.combine(params, static)
    log_q = flow.log_prob(jax.lax.stop_gradient(X))
    return _centred_forward(log_q, weights)


def _centred_forward(log_q: Float[Array, " S"], weights: Float[Array, " S"]):
    """-sum_i (w_i - 1/S_ok) log q_i over the finite log q_i, the weights held fixed."""
    ok = jnp.isfinite(log_q)
    centred = jax.lax.stop_gradient(weights - 1.0 / jnp.maximum(jnp.sum(ok), 1))
    return -jnp.sum(jnp.where(ok, centred * log_q, 0.0))


class JointTerms(NamedTuple):
    """Per-sample quantities of a batch drawn from q(X) q(Y|X), all (S,) unless noted.

    ``surrogate``: the term whose gradient is the estimator; ``log_weights``: -beta u - log q,
    -inf where not usable; ``ok``: finite and valid; ``u``: reduced energy; ``n_evals``: energy +
    gradient evaluations made (one per sample); ``X`` (S, n_x), ``Y`` (S, n_y): the samples.
    """

    X: Array
    Y: Array
    surrogate: Array
    log_weights: Array
    ok: Array
    u: Array
    n_evals: Array


def _energy_forces(target, X, Y, beta, force_clip: float, linear_map=None):
    """u (S,), and beta grad_X u (S, n_x), beta grad_Y u (S, n_y) held fixed, jointly clipped
    per sample by :func:`clip_forces` (a clash cannot set the update). Fourth, with a
    ``linear_map`` (:mod:`coarseflow.model.linear_map`; u is then that of the mapped positions
    r = W R(X, Y)): (beta grad_r u (S, N, 3), scaled by the same factor per sample, and the
    latent positions R (S, N, 3)), both held fixed; else None."""
    X, Y = jax.lax.stop_gradient(X), jax.lax.stop_gradient(Y)
    if linear_map is None:
        u, (gx, gy) = jax.vmap(jax.value_and_grad(target.energy_xy, argnums=(0, 1)))(X, Y)
        physical_force = None
    else:
        linear_map = jax.lax.stop_gradient(linear_map)

        def one(X, Y):
            r, pull_back = jax.vjp(lambda a, b: positions(linear_map, target, a, b), X, Y)
            u, g_r = jax.value_and_grad(target.positions_energy)(r)
            R = target.full_positions(target.partition.merge(X, Y))
            return u, *pull_back(g_r), g_r, R

        u, gx, gy, g_r, R = jax.vmap(one)(X, Y)
    g = beta * jnp.concatenate([gx, gy], axis=-1)
    scale = _clip_scale(g, force_clip)
    if linear_map is not None:
        physical_force = (beta * g_r * scale[:, None, None], R)
    g = g * scale[:, None]
    return u, g[:, : X.shape[-1]], g[:, X.shape[-1] :], physical_force


def masked_mean(values, ok):
    return jnp.sum(jnp.where(ok, values, 0.0)) / jnp.maximum(jnp.sum(ok), 1)


def joint_terms(
    flow, conditional, key, target, z: Float[Array, "S n_x"], beta, force_clip: float
) -> JointTerms:
    """The fully reparameterised reverse KL of q(X) q(Y|X) against p_beta (no chains).

    X = f(z), Y ~ q(Y|X) reparameterised; the gradient of log q(X) + log q(Y|X) + beta u(X, Y)
    is autodiff's, with beta grad u entered as a fixed (clipped) force dotted into (X, Y), so
    that it equals the gradient of the joint KL where nothing is clipped.

    With the conditional's linear map, (X, Y) are the latent configuration, u is that of the
    physical x = Phi(X, Y) and log q that of x, log q(X) + log q(Y|X) - log|det dPhi/d(X, Y)|
    (p(X, Y) = p_beta(Phi(X, Y)) |det dPhi/d(X, Y)|); the map's own parameters receive
    beta grad u through a fixed force of the same kind, and the log-det by autodiff. ``X``,
    ``Y`` of the result stay latent.
    """
    X, log_det = sample_with_log_det(flow, z)
    log_qX = flow.base_dist.log_prob(z) - log_det
    draws = conditional.sample_batch(key, target, X, beta)
    linear_map = model_map(conditional)
    u, gx, gy, physical_force = _energy_forces(target, X, draws.Y, beta, force_clip, linear_map)
    log_q = log_qX + draws.log_q
    if linear_map is not None:
        log_q = log_q - jax.vmap(lambda a, b: physical(linear_map, target, a, b)[1])(X, draws.Y)
    ok = (
        draws.valid
        & jnp.isfinite(log_q)
        & jnp.isfinite(u)
        & jnp.all(jnp.isfinite(gx), -1)
        & jnp.all(jnp.isfinite(gy), -1)
    )
    # a sample left out contributes no gradient, not 0 x NaN through a fixed force
    gx, gy = jnp.where(ok[:, None], gx, 0.0), jnp.where(ok[:, None], gy, 0.0)
    surrogate = log_q + jnp.sum(gx * X, -1) + jnp.sum(gy * draws.Y, -1)
    if linear_map is not None:
        # the map's parameters: the fixed physical force dotted into W R, R held fixed; its
        # value is held at 0 (W R - W R), so the surrogate's value is as without the map
        g_r, R = physical_force
        g_r = jnp.where(ok[:, None, None], g_r, 0.0)
        r = linear_map(R)
        surrogate = surrogate + jnp.sum(g_r * (r - jax.lax.stop_gradient(r)), axis=(-2, -1))
    log_w = jnp.where(ok, jax.lax.stop_gradient(-beta * u - log_q), -jnp.inf)
    return JointTerms(X, draws.Y, surrogate, log_w, ok, u, jnp.asarray(z.shape[0]))


def _refuse_linear_map(conditional) -> None:
    """The conditional losses at fixed X know p_beta(Y|X) of the unmapped configuration only."""
    if model_map(conditional) is not None:
        raise ConfigError(
            "[conditional] linear_map = true: needs [training] objective = 'joint' (the hybrid "
            "and fab objectives train q(Y|X) against the unmapped configuration)"
        )


def conditional_terms(conditional, key, target, X, beta, force_clip: float) -> JointTerms:
    """The conditional reverse KL E_{q(X)} KL(q(Y|X) || p_beta(Y|X)) at fixed X (S, n_x): the
    ``hybrid`` objective's part for q(Y|X). log q(X) is not part of it (surrogate, log_weights
    leave it out). Refused with the conditional's linear map: p_beta(Y|X) would be that of the
    mapped configuration, which nothing here computes."""
    _refuse_linear_map(conditional)
    X = jax.lax.stop_gradient(X)
    draws = conditional.sample_batch(key, target, X, beta)
    u, _, gy, _ = _energy_forces(target, X, draws.Y, beta, force_clip)
    ok = draws.valid & jnp.isfinite(draws.log_q) & jnp.isfinite(u) & jnp.all(jnp.isfinite(gy), -1)
    surrogate = draws.log_q + jnp.sum(gy * draws.Y, -1)
    log_w = jnp.where(ok, jax.lax.stop_gradient(-beta * u - draws.log_q), -jnp.inf)
    return JointTerms(X, draws.Y, surrogate, log_w, ok, u, jnp.asarray(X.shape[0]))


def conditional_importance_weighted(
    conditional, key, target, X, beta, draws: int, force_clip: float
) -> tuple[Float[Array, ""], Array, Array]:
    """The importance-weighted bound of q(Y|X) at every ``draws``-th row of X (S, n_x), with K =
    ``draws`` draws of Y at each (S evaluations in all; S a multiple of K):

        L(X) = log (1/K) sum_j w_j,    w_j = exp(-beta u(X, Y_j)) / q(Y_j | X),

    by its doubly reparameterised gradient (Tucker, Lawson, Gu and Maddison, ICLR 2019):
    sum_j wbar_j^2 times the path derivative of log w_j, q's density held fixed (wbar normalised
    within the X). As K grows its optimum is the q(Y|X) of least weight variance: mass-covering,
    where the reverse KL (K = 1) is mode-seeking and leaves q's tails too light for importance
    weights. Returns (loss, usable (S,) bool, evaluations): the loss's value is minus the mean
    of L over the X with a usable draw, its gradient that of the estimator above. Where
    q = p_beta(Y|X) every draw's gradient is exactly 0.

    Measured (docs/benchmarks.md, Session 23): at a trained run's fixed q(X), from its q(Y|X),
    at a learning rate of 3e-5 it raises the one-shot ESS by two thirds; inside fab's ladder at the
    ladder's 3e-4 it diverged, at beta 0.05 and at beta 1 (draws that leave the coordinates'
    range carry no gradient); ``[training] refit_updates`` uses it after the ladder, at its own
    learning rate (:mod:`coarseflow.training.refit`).
    """
    _refuse_linear_map(conditional)
    X = jnp.repeat(jax.lax.stop_gradient(X)[::draws], draws, axis=0)
    frozen = jax.tree.map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, conditional)
    drawn = conditional.sample_batch(key, target, X, beta)
    log_q = jax.vmap(lambda x, y: frozen.log_prob(target, x, beta, y))(X, drawn.Y)
    u, _, gy, _ = _energy_forces(target, X, drawn.Y, beta, force_clip)
    ok = drawn.valid & jnp.isfinite(log_q) & jnp.isfinite(u) & jnp.all(jnp.isfinite(gy), -1)
    log_w = jnp.where(ok, jax.lax.stop_gradient(-beta * u - log_q), -jnp.inf).reshape(-1, draws)
    usable = jnp.any(jnp.isfinite(log_w), axis=1, keepdims=True)
    wbar = jnp.where(usable, jax.nn.softmax(jnp.where(usable, log_w, 0.0), axis=1), 0.0)
    # beta u's path derivative through the fixed (clipped) force: no second derivative of u
    path = log_q + jnp.sum(jnp.where(ok[:, None], gy, 0.0) * drawn.Y, -1)
    path = jnp.where(ok, path, 0.0).reshape(-1, draws)
    surrogate = jnp.mean(jnp.sum(jax.lax.stop_gradient(wbar**2) * path, axis=1))
    bound = jax.nn.logsumexp(jnp.where(usable, log_w, 0.0), axis=1) - jnp.log(draws)
    value = -masked_mean(bound, usable[:, 0])
    return value + surrogate - jax.lax.stop_gradient(surrogate), ok, jnp.asarray(X.shape[0])


def joint_forward_kl_loss(flow, conditional, target, X, Y, beta, weights):
    """-sum_i (w_i - 1/S) [log q(X_i) + log q(Y_i|X_i)]: :func:`forward_kl_loss` on the joint,
    with the learned conditional's exact density; samples (S, .) and weights (S,) held fixed.

    With the conditional's linear map the samples held fixed are the physical x_i = Phi(X_i,
    Y_i), and log q(x_i) = log q(X'_i) + log q(Y'_i|X'_i) - log|det dPhi| at the latent
    (X'_i, Y'_i) = Phi^-1(x_i) (equal to (X_i, Y_i), but a function of the map), so that the
    map's parameters receive the forward KL's gradient too."""
    X, Y = jax.lax.stop_gradient(X), jax.lax.stop_gradient(Y)
    log_det = jnp.zeros(X.shape[:1], X.dtype)
    linear_map = model_map(conditional)
    if linear_map is not None:
        x, _ = jax.vmap(lambda a, b: physical(linear_map, target, a, b))(X, Y)
        X, Y = jax.vmap(lambda v: latent(linear_map, target, v))(jax.lax.stop_gradient(x))
        log_det = jax.vmap(lambda a, b: physical(linear_map, target, a, b)[1])(X, Y)
    log_qY = jax.vmap(lambda x, y: conditional.log_prob(target, x, beta, y))(X, Y)
    return _centred_forward(flow.log_prob(X) + log_qY - log_det, weights)
