"""The ``fab`` objective: flow annealed importance sampling bootstrap (Midgley et al., ICLR 2023)
on the joint q(X) q(Y|X), with the learned conditional's exact density.

FAB minimises the alpha = 2 divergence D_2(p || q) = log ∫ p^2 / q, which is mass-covering: a
region where q is small and p is not costs p^2 / q. Its gradient is

    grad D_2 = -E_{g}[grad log q(x)] ,    g = p^2 / q / ∫ p^2 / q ,

estimated by annealed importance sampling (:func:`coarseflow.samplers.annealing.anneal`) from q
toward g: the loss is -sum_i wbar_i log q(x_i) with the AIS end points x_i and their
self-normalised weights wbar_i held fixed. AIS moves q's draws toward where q undercovers p, so
that modes q is losing still get weight (the reverse KL sees them only through the rare draws
that land there).

The AIS runs in q's latent space u = (z, eps) (z the flow's base draw, eps the conditional's),
where q is its normalised base r(u) and the pull-back of the target is smooth. With
x = T(u) = (f(z), Y(X, eps)) and q0(x) = r(u) / |dT/du| the conditional before its
symmetrisation over the relabelings of Y (:mod:`coarseflow.model.conditional`), the pull-back of
g is

    g~(u) ∝ r(u) * (p(x) / q0(x)) * (p(x) / q(x)) ,

which pushes forward to p^2 / q in x exactly (both densities pull back with the same Jacobian),
whatever the relabelings. Each path costs ``n_steps + 1`` energy + gradient evaluations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import paramax
from jaxtyping import Array, Float

from coarseflow.samplers.annealing import anneal


class FabBatch(NamedTuple):
    """AIS end points of S paths (:func:`latent_ais`), all (S,) unless noted; fab's loss holds
    them fixed.

    ``X`` (S, n_x), ``Y`` (S, n_y): the end points (Y not relabeled); ``log_weights``: their
    AIS log-weights toward the path's target (-inf where unusable); ``log_q``: q's exact
    (symmetrised) log-density at the end points; ``acceptance``: each path's mean MALA
    acceptance;
    ``start_log_weights``: log p_beta / q of the paths' starting draws x ~ q, -inf where not
    usable (their ESS is q's own); ``start_u``: reduced energy there; ``n_evals`` ():
    energy + gradient evaluations made.
    """

    X: Array
    Y: Array
    log_weights: Array
    log_q: Array
    acceptance: Array
    start_log_weights: Array
    start_u: Array
    n_evals: Array


def _log_normal(v):
    return jnp.sum(-0.5 * v**2 - 0.5 * math.log(2 * math.pi))


def _latent(flow, conditional, target, beta, u):
    """(X, Y, log q0(x), log q(x), valid) for the latent u = (z, eps) (n_x + n_y,)."""
    n_x = target.partition.n_x
    z, eps = u[:n_x], u[n_x:]
    X, log_det = paramax.unwrap(flow.bijection).transform_and_log_det(z)
    log_qX = flow.base_dist.log_prob(z) - log_det
    gaussian = conditional._gaussian(target, X, beta)
    Y, log_q0Y, valid = conditional.transform(target, X, beta, eps, gaussian)
    log_qY = (
        log_q0Y
        if len(conditional.relabelings) == 1
        else conditional.log_prob(target, X, beta, Y, gaussian)
    )
    return X, Y, log_qX + log_q0Y, log_qX + log_qY, valid


TOWARD = ("p2/q", "p")


def latent_ais(
    flow,
    conditional,
    key,
    target,
    beta,
    n: int,
    n_steps: int,
    step_size: float,
    toward: str,
    n_leapfrog: int = 1,
) -> FabBatch:
    """``n`` AIS paths in q's latent space from q(X) q(Y|X) toward ``toward``: "p2/q" (fab's
    g of the module docstring; called outside the gradient, the loss holds the end points
    fixed) or "p", p_beta itself, whose pull-back r(u) p(x) / q(x) has integral Z(beta)
    exactly (p / q is the same for every relabeling of a draw): the weights are then unbiased
    for Z and the end points x = T(u), self-normalised, estimate any observable that the
    relabelings leave unchanged (prediction's refinement,
    :func:`coarseflow.predict.refine.refine`). ``n_leapfrog`` > 1: HMC steps of that many
    leapfrog steps instead of MALA (:func:`~coarseflow.samplers.annealing.anneal`)."""
    if toward not in TOWARD:
        raise ValueError(f"toward: expected one of {TOWARD}, got {toward!r}")
    n_x, n_y = target.partition.n_x, target.partition.n_y

    def log_base(u):
        return flow.base_dist.log_prob(u[:n_x]) + _log_normal(u[n_x:])

    def log_gamma(u):
        X, Y, log_q0, log_q, valid = _latent(flow, conditional, target, beta, u)
        energy = target.energy_xy(X, Y)
        log_w = -beta * energy - log_q
        value = log_base(u) + log_w
        if toward == "p2/q":
            value = value + (-beta * energy - log_q0)
        value = jnp.where(valid, value, -jnp.inf)
        return value, (jnp.where(valid & jnp.isfinite(log_w), log_w, -jnp.inf), energy)

    k_z, k_eps, k_path = jr.split(key, 3)
    z0 = flow.base_dist.sample(k_z, (n,))
    u0 = jnp.concatenate([z0, jr.normal(k_eps, (n, n_y), z0.dtype)], -1)
    out = jax.vmap(lambda k, u: anneal(k, log_base, log_gamma, u, n_steps, step_size, n_leapfrog))(
        jr.split(k_path, n), u0
    )
    X, Y, _, log_q, valid = jax.vmap(lambda u: _latent(flow, conditional, target, beta, u))(out.z)
    valid = valid & jnp.isfinite(out.log_weight) & jnp.isfinite(log_q)
    log_w = jnp.where(valid, out.log_weight, -jnp.inf)
    start_log_w, start_u = out.aux
    return FabBatch(
        X,
        Y,
        log_w,
        jax.lax.stop_gradient(log_q),
        out.acceptance,
        start_log_w,
        start_u,
        jnp.asarray(n * (n_steps * n_leapfrog + 1)),
    )


def alpha2_loss(flow, conditional, target, beta, batch: FabBatch) -> Float[Array, ""]:
    """-sum_i wbar_i log q(x_i): its gradient estimates grad D_2(p_beta || q) up to a positive
    factor; the end points and weights are held fixed, q's density is exact (symmetrised)."""
    X, Y = jax.lax.stop_gradient((batch.X, batch.Y))
    log_q = flow.log_prob(X) + jax.vmap(lambda x, y: conditional.log_prob(target, x, beta, y))(X, Y)
    ok = jnp.isfinite(log_q) & jnp.isfinite(batch.log_weights)
    weights = jax.nn.softmax(jnp.where(ok, batch.log_weights, -jnp.inf))
    weights = jax.lax.stop_gradient(jnp.where(ok, weights, 0.0))
    return -jnp.sum(jnp.where(ok, weights * log_q, 0.0))


class ReplayBuffer(NamedTuple):
    """FAB's prioritised replay buffer (Midgley et al., ICLR 2023, section 4.2): the AIS end
    points of the last few batches, reused for several updates. A ring of N entries, all (N,)
    unless noted: ``X`` (N, n_x), ``Y`` (N, n_y); ``log_weights``: AIS log-weights toward
    p_beta^2 / q_old, with q_old the q of ``log_q`` (-inf: empty or unusable); ``log_q``: log q_old
    at the entry; ``head`` (): where the next batch goes.

    As q changes, the target g = p^2 / q changes with it: an entry's weight toward the current
    g is w_old * q_old / q (:func:`replay_loss` applies the factor, :func:`replay_update` folds
    it into the entry), so reusing old end points stays consistent.
    """

    X: Array
    Y: Array
    log_weights: Array
    log_q: Array
    head: Array


def empty_buffer(n: int, n_x: int, n_y: int, dtype) -> ReplayBuffer:
    """A buffer of ``n`` entries, all empty."""
    return ReplayBuffer(
        jnp.zeros((n, n_x), dtype),
        jnp.zeros((n, n_y), dtype),
        jnp.full((n,), -jnp.inf, dtype),
        jnp.zeros((n,), dtype),
        jnp.asarray(0),
    )


def replay_add(buffer: ReplayBuffer, batch: FabBatch) -> ReplayBuffer:
    """``batch``'s S end points written over the oldest S entries (N a multiple of S)."""
    S = batch.X.shape[0]

    def put(stored, new):
        return jax.lax.dynamic_update_slice_in_dim(stored, new.astype(stored.dtype), buffer.head, 0)

    return ReplayBuffer(
        put(buffer.X, batch.X),
        put(buffer.Y, batch.Y),
        put(buffer.log_weights, batch.log_weights),
        put(buffer.log_q, batch.log_q),
        (buffer.head + S) % buffer.X.shape[0],
    )


def replay_draw(key, buffer: ReplayBuffer, m: int) -> Array:
    """``m`` entry indices (m,), drawn with replacement with probability ∝ the stored weights
    (by the inverse of their cumulative sum: O(N + m log N) memory and time, where
    jax.random.categorical would draw an (m, N) array of Gumbel noise)."""
    cdf = jnp.cumsum(jax.nn.softmax(buffer.log_weights))
    u = jr.uniform(key, (m,), cdf.dtype) * cdf[-1]
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)


def _replay_log_q(flow, conditional, target, beta, buffer, idx):
    X, Y = buffer.X[idx], buffer.Y[idx]
    return flow.log_prob(X) + jax.vmap(lambda x, y: conditional.log_prob(target, x, beta, y))(X, Y)


def replay_loss(flow, conditional, target, beta, buffer: ReplayBuffer, idx: Array):
    """(loss, log q at the entries (m,), held fixed) for the entries ``idx`` (m,) drawn by
    :func:`replay_draw`: -sum_m c_m log q(x_m), c_m ∝ q_old(x_m) / q(x_m) normalised. Drawn ∝
    w_old and corrected by c, the entries are weighted ∝ w_old q_old / q, their weight toward
    the current p^2 / q: the gradient estimates grad D_2(p_beta || q) up to a positive factor,
    as :func:`alpha2_loss` does with fresh end points."""
    log_q = _replay_log_q(flow, conditional, target, beta, buffer, idx)
    ok = jnp.isfinite(log_q)
    fixed = jax.lax.stop_gradient(log_q)
    c = jax.nn.softmax(jnp.where(ok, buffer.log_q[idx] - fixed, -jnp.inf))
    c = jax.lax.stop_gradient(jnp.where(ok, c, 0.0))
    return -jnp.sum(jnp.where(ok, c * log_q, 0.0)), fixed


def replay_update(buffer: ReplayBuffer, idx: Array, log_q: Array) -> ReplayBuffer:
    """The drawn entries re-based on the q of ``log_q`` (m,): w <- w q_old / q, q_old <- q.
    An entry drawn twice gets the same values twice; an entry whose log q is not finite is
    emptied."""
    log_w = buffer.log_weights[idx] + buffer.log_q[idx] - log_q
    log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
    return buffer._replace(
        log_weights=buffer.log_weights.at[idx].set(log_w),
        log_q=buffer.log_q.at[idx].set(jnp.where(jnp.isfinite(log_q), log_q, 0.0)),
    )
