"""q(X): a rational-quadratic-spline coupling flow on a truncated standard normal base.

z ~ N(0, I) truncated to [-B, B]^n_x  ->  spline coupling layers (identity outside [-B, B], so
z stays inside)  ->  a fixed affine map of [-B, B]^n_x onto the target's box for X.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import paramax
from flowjax.bijections import AbstractBijection, Affine, Chain, RationalQuadraticSpline
from flowjax.distributions import AbstractDistribution, Transformed
from flowjax.flows import coupling_flow
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.errors import ConfigError


class TruncatedStandardNormal(AbstractDistribution):
    """Standard normal truncated to the box [-bound, bound]^dim, normalised on that box."""

    shape: tuple[int, ...]
    bound: float
    cond_shape: None = None

    def __init__(self, dim: int, bound: float):
        self.shape = (int(dim),)
        self.bound = float(bound)

    def _log_prob(self, x, condition=None):
        # log N(x) - log(Phi(B) - Phi(-B)) per coordinate; -inf outside the box.
        b = self.bound
        log_mass = log_ndtr(b) + jnp.log1p(-jnp.exp(log_ndtr(-b) - log_ndtr(b)))
        logp = jnp.sum(-0.5 * x**2 - 0.5 * jnp.log(2 * jnp.pi) - log_mass)
        inside = jnp.all(jnp.abs(x) <= b)
        return jnp.where(inside, logp, -jnp.inf)

    def _sample(self, key, condition=None):
        return jr.truncated_normal(key, -self.bound, self.bound, self.shape)


class FlowSettings(eqx.Module):
    """Sizes of q(X). ``interval`` is the spline half-width B (also the base's truncation)."""

    knots: int = 8
    interval: float = 4.0
    layers: int = 4
    nn_width: int = 64
    nn_depth: int = 2
    seed: int = 0

    def __check_init__(self):
        checks = {
            "knots": self.knots >= 2,
            "interval": self.interval > 0,
            "layers": self.layers >= 1,
            "nn_width": self.nn_width >= 1,
            "nn_depth": self.nn_depth >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"[model] {name}: out of range, got {getattr(self, name)!r}")


def make_flow(
    key: PRNGKeyArray,
    *,
    lower: Float[np.ndarray, " n_x"],
    upper: Float[np.ndarray, " n_x"],
    settings: FlowSettings = FlowSettings(),
    output: AbstractBijection | None = None,
) -> Transformed:
    """The flow q(X) whose support is the box [lower, upper] (each (n_x,)).

    At initialisation the splines are the identity, so q(X) is the truncated normal stretched
    onto the box (wide and unimodal: a good start at small beta). ``output``: an optional fixed
    bijection applied last (e.g. internal -> Cartesian coordinates of a molecule); the box is
    then in its input space. It is not trained.
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    if lower.shape != upper.shape or lower.ndim != 1 or np.any(upper <= lower):
        raise ConfigError(f"flow box: need lower < upper, each (n_x,), got {lower}, {upper}")
    b = settings.interval
    base = TruncatedStandardNormal(lower.size, b)
    splines = coupling_flow(
        key,
        base_dist=base,
        transformer=RationalQuadraticSpline(knots=settings.knots, interval=b),
        flow_layers=settings.layers,
        nn_width=settings.nn_width,
        nn_depth=settings.nn_depth,
        nn_activation=jax.nn.gelu,
        invert=False,  # fast forward transform: training samples X = f(z)
    ).bijection
    to_box = paramax.non_trainable(Affine(loc=(upper + lower) / 2, scale=(upper - lower) / (2 * b)))
    layers = [splines, to_box] + ([paramax.non_trainable(output)] if output is not None else [])
    return Transformed(base, Chain(layers))


def split_trainable(flow):
    """(trainable params, static rest) of a flow, leaving non-trainable wrappers out."""
    return eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda x: isinstance(x, paramax.NonTrainable)
    )


def sample_with_log_det(flow: Transformed, z: Float[Array, "S n_x"]):
    """X = f(z) (S, n_x) and log|det df/dz| (S,) for base samples z."""
    bij = paramax.unwrap(flow.bijection)
    return jax.vmap(bij.transform_and_log_det)(z)
