"""A defensive mixture for prediction (Hesterberg, Technometrics 1995): X is drawn from

    q_a(X) = (1 - a) q(X) + a q_low(X) ,

q the sampled model and q_low a checkpoint of the same ladder at a lower beta, which covers
what q may have lost on the way up (p_beta at a lower beta is broader). Every weight uses q_a's
exact density, so the estimates stay unbiased, and where q_low covers p the weights are bounded
by p / (a q_low): a basin q under-covers still gets draws, and their weights stay finite.
Y ~ q(Y|X) is the sampled model's conditional for every X.

It is for the one-shot draws: the refinement (:mod:`coarseflow.predict.refine`) starts from q
itself. Started from the mixture instead (its draws mapped into q's latent space, the path's
base the pull-back of q_a), the refined weights of alanine dipeptide were heavy-tailed (Pareto
k 0.67-0.94, ESS 0.11 against 0.62 from q; docs/benchmarks.md, Session 19).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float


class Defensive(NamedTuple):
    """``flow``: q_low(X), a lower-beta checkpoint's flow of the same run (the same structure
    as q's); ``fraction``: a in (0, 1), the share of draws from it."""

    flow: object
    fraction: float


def mixture_log_prob(
    defensive: Defensive, X: Float[Array, "S n_x"], log_qX: Float[Array, " S"]
) -> Float[Array, " S"]:
    """log q_a(X) (S,), given log q(X) (S,) of the sampled model at X (S, n_x)."""
    a = defensive.fraction
    log_low = defensive.flow.log_prob(X)
    return jnp.logaddexp(jnp.log1p(-a) + log_qX, jnp.log(a) + log_low)


def sample_mixture(key, flow, defensive: Defensive, n: int) -> Float[Array, "n n_x"]:
    """n draws X (n, n_x) of q_a: each from q_low with probability a, else from q."""
    k_q, k_low, k_pick = jr.split(key, 3)
    from_low = jr.uniform(k_pick, (n,)) < defensive.fraction
    return jnp.where(from_low[:, None], defensive.flow.sample(k_low, (n,)), flow.sample(k_q, (n,)))
