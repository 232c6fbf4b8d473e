"""A learned conditional q_psi(Y | X) with an exact density (METHOD.md section 3, amortized).

It lives in the coordinates xi = ``target.y_internal(X, Y)`` that the target declares for Y (a
molecule: bond lengths, angles and dihedrals of the fast atoms; Y itself otherwise):

    eps ~ N(0, I_{n_y})
    v   = s(eps; h(X))                       kind "flow": a conditional RQ-spline coupling flow,
                                             the identity at first; kind "gaussian": v = eps
    t   = L(X) v / sqrt(beta)                L lower triangular, positive diagonal
    xi  = mu(X) + t                          for the ordinary coordinates
    xi  = mu(X) + pi tanh(t / pi)            for the periodic ones (dihedrals): one-to-one onto
                                             the circle window (mu - pi, mu + pi), near-linear
                                             where t is small, so the density stays exact
    Y   = target.y_cartesian(X, xi)

h(X) are features of X: the flow's box coordinates (``target.x_bijection()`` inverted)
standardised to the box, angles as (sin, cos). mu(X) = xi_ref(X) + b + net(h), with xi_ref the
target's own starting point (``y_internal(X, y_init(X))``); log diag L and the strictly lower
part of L are constants plus net(h). The net's last layer starts at zero, so the untrained
conditional is one Gaussian in xi around xi_ref + b, whose b and L
:func:`coarseflow.predict.fit_to_laplace` sets from the Laplace fits of p(Y|X). The
1 / sqrt(beta) makes the width follow the tempering ladder as a near-harmonic p_beta(Y|X)
does (exactly so for the mixture).

Exact symmetries: the target's ``y_relabelings()`` (S, n_y) are permutations of Y that leave
u(X, .) unchanged (a methyl's hydrogens). The conditional is their symmetrised mixture
q(Y|X) = (1/S) sum_sigma q0(Y[sigma] | X): a sample of q0 is relabeled by a random sigma, and
the density sums over all S. So one copy learned stands for all, exactly. Where the target's
relabelings permute xi (``y_internal_relabelings``: a molecule places a methyl's hydrogens from
one frame), the sum needs xi and its log-det once, not once per relabeling.

Optionally (``ConditionalSettings.linear_map``) the conditional carries the learnable linear map
of the atoms behind the partition (:mod:`coarseflow.model.linear_map`): (X, Y) are then the
latent configuration R and the physical one is x = Phi(X, Y), the target's coordinates of W R,
with density q(X) q(Y|X) / |det dPhi/d(X, Y)| (``linear_map.physical``). The map travels
with the conditional so that the model stays the pair (flow, conditional): trained,
checkpointed and loaded with it; None (no leaves) without the map.

Samples whose xi leaves the range that ``y_internal`` returns (a negative bond length, an angle
beyond pi) are flagged ``valid = False``: their importance weight is zero, which keeps the
estimates unbiased (q's mass outside p's support is only wasted).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import StandardNormal
from flowjax.flows import coupling_flow
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.errors import ConfigError
from coarseflow.model.gaussian import (
    normal_log_prob,
    relabeling_groups,
    summed_log_prob,
    whiten,
    worth_it,
    wrap,
)
from coarseflow.model.linear_map import LinearMap, check_linear_map
from coarseflow.model.polish import polish_mean

KINDS = ("chains", "gaussian", "flow")


class ConditionalSettings(eqx.Module):
    """The ``[conditional]`` table: how q(Y|X) is represented.

    kind: "chains" (the paper's MCMC on Y|X, no learned density: prediction uses [prediction]
        conditional), "gaussian" (the amortized Gaussian) or "flow" (that Gaussian after a
        conditional rational-quadratic spline coupling flow).
    nn_width, nn_depth: the network of X that gives mu, L (and the spline's conditioner).
    knots, interval, layers: the spline flow of kind "flow" (interval in units of the
        Gaussian's standard deviations).
    laplace_fits: how many X from the untrained q(X) the initial Gaussian is fitted on.
    seed: the networks' initialisation.
    linear_map: learn a linear map W of the atoms behind the partition as well
        (:mod:`coarseflow.model.linear_map`): the physical configuration is W R(X, Y), not
        (X, Y) itself. A molecule target and [training] objective = "joint" only; W = I (the
        plain partition) at first.
    """

    kind: str = eqx.field(default="chains", static=True)
    nn_width: int = eqx.field(default=64, static=True)
    nn_depth: int = eqx.field(default=2, static=True)
    knots: int = eqx.field(default=8, static=True)
    interval: float = eqx.field(default=4.0, static=True)
    layers: int = eqx.field(default=2, static=True)
    laplace_fits: int = eqx.field(default=32, static=True)
    seed: int = eqx.field(default=0, static=True)
    linear_map: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        from coarseflow import checks

        checks.choice("[conditional] kind", self.kind, KINDS)
        checks.boolean("[conditional] linear_map", self.linear_map)
        if self.linear_map and not self.learned:
            raise ConfigError(
                "[conditional] linear_map = true: needs a learned q(Y|X) trained with the map "
                "([conditional] kind = 'gaussian' or 'flow', [training] objective = 'joint'), "
                f"got kind = {self.kind!r}"
            )
        for name, low in (
            ("nn_width", 1),
            ("nn_depth", 0),
            ("knots", 2),
            ("layers", 1),
            ("laplace_fits", 1),
        ):
            checks.integer(
                f"[conditional] {name}",
                getattr(self, name),
                low,
                checks.MAX_COUNT if name == "laplace_fits" else 100_000,
            )
        checks.number("[conditional] interval", self.interval, 0.0, 100.0)
        checks.seed("[conditional] seed", self.seed)

    @property
    def learned(self) -> bool:
        return self.kind != "chains"


class ConditionalSample(NamedTuple):
    """One draw of q(Y|X) for one X: Y (n_y,), log q(Y|X) (), valid () bool (see module)."""

    Y: Array
    log_q: Array
    valid: Array


class XFeatures(eqx.Module):
    """Inputs of the conditional's network: the flow's box coordinates of X scaled to [-1, 1],
    with the target's periodic ones (``x_periodic``) as (sin, cos). The box is read from the
    target once, here (its ``x_bounds`` are NumPy, not traceable)."""

    centre: tuple[float, ...] = eqx.field(static=True)
    half: tuple[float, ...] = eqx.field(static=True)
    periodic: tuple[bool, ...] = eqx.field(static=True)

    @classmethod
    def of(cls, target) -> XFeatures:
        lower, upper = (np.asarray(b, dtype=np.float64) for b in target.x_bounds())
        return cls(
            tuple(float(c) for c in (upper + lower) / 2),
            tuple(float(h) for h in (upper - lower) / 2),
            tuple(bool(p) for p in np.asarray(target.x_periodic(), bool)),
        )

    @property
    def size(self) -> int:
        return len(self.periodic) + sum(self.periodic)

    def __call__(self, target, X: Float[Array, " n_x"]) -> Float[Array, " n_f"]:
        bijection = target.x_bijection()
        q = X if bijection is None else bijection.inverse(X)
        periodic = np.asarray(self.periodic, bool)
        scaled = (q - np.asarray(self.centre)) / np.asarray(self.half)
        return jnp.concatenate([scaled[~periodic], jnp.sin(q[periodic]), jnp.cos(q[periodic])])


class LearnedConditional(eqx.Module):
    """q_psi(Y|X) of the module docstring. Methods take one X (vmap over a batch)."""

    net: eqx.nn.MLP  # h(X) -> (mean, log diag, strictly lower) corrections
    loc: Float[Array, " n_y"]  # b: constant offset of the mean from xi_ref
    log_diag: Float[Array, " n_y"]  # log diag L (beta-free units)
    lower: Float[Array, " n_low"]  # strictly lower part of L, row-major
    spline: eqx.Module | None  # kind "flow": conditional coupling flow on eps, else None
    features: XFeatures
    periodic: tuple[bool, ...] = eqx.field(static=True)
    relabelings: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    # the same relabelings acting on xi (the target's y_internal_relabelings), or None
    xi_relabelings: tuple[tuple[int, ...], ...] | None = eqx.field(static=True, default=None)
    # the learnable linear map of the atoms behind the partition, or None (the partition)
    linear_map: LinearMap | None = None
    # Newton-like steps that move mu(X) toward the mode of p_beta(xi|X) (polish_mean; set by
    # [prediction] polish_steps through :meth:`polished`); 0: the network's mean
    polish: int = eqx.field(static=True, default=0)

    @property
    def n_y(self) -> int:
        return len(self.periodic)

    @property
    def polish_evals(self) -> int:
        """Energy + force evaluations the polish makes at each X: polish + 1, or 0."""
        return self.polish + 1 if self.polish else 0

    def polished(self, steps: int) -> LearnedConditional:
        """The same conditional with its mean polished by ``steps`` steps at every X."""
        return dataclasses.replace(self, polish=steps)

    def _gaussian(self, target, X, beta):
        """(h (n_f,), mu (n_y,), L (n_y, n_y)) at X, L before the 1 / sqrt(beta): everything
        that does not depend on Y, computed once per X (mu depends on beta where polished)."""
        n = self.n_y
        h = self.features(target, X)
        out = self.net(h)
        xi_ref = target.y_internal(X, target.y_init(X))
        mu = xi_ref + self.loc + out[:n]
        rows, cols = np.tril_indices(n, -1)
        L = jnp.zeros((n, n), X.dtype).at[rows, cols].set(self.lower + out[2 * n :])
        L = L + jnp.diag(jnp.exp(self.log_diag + out[n : 2 * n]))
        if self.polish:
            mu = polish_mean(target, X, beta, mu, L, self.polish)
        return h, mu, L

    def _from_eps(self, gaussian, beta, eps):
        """xi (n_y,) and log q0(xi | X) () for the base draw eps (n_y,); ``gaussian``: the
        output of ``_gaussian`` at X."""
        h, mu, L = gaussian
        log_q = normal_log_prob(eps)
        v = eps
        if self.spline is not None:
            v, log_det = self.spline.transform_and_log_det(eps, h)
            log_q = log_q - log_det
        t = (L @ v) / jnp.sqrt(beta)
        log_q = log_q - jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * self.n_y * jnp.log(beta)
        # the angles only (indexed, not masked: tanh saturates elsewhere, and a masked -inf
        # would still poison the gradient)
        angles = np.flatnonzero(np.asarray(self.periodic, bool))
        bent = jnp.tanh(t[angles] / jnp.pi)
        log_q = log_q - jnp.sum(jnp.log1p(-(bent**2)))
        return mu + t.at[angles].set(jnp.pi * bent), log_q

    def _log_prob_xi(self, xi, beta, gaussian):
        """log q0(xi | X) (), the unsymmetrised density of xi (n_y,)."""
        h, mu, L = gaussian
        eps, log_q = whiten(xi, beta, mu, L, self.periodic)
        if self.spline is not None:
            eps, log_det = self.spline.inverse_and_log_det(eps, h)
            log_q = log_q + log_det
        return log_q + normal_log_prob(eps)

    def _log_prob0(self, target, X, beta, Y, gaussian):
        """log q0(Y | X) (), the unsymmetrised density, through xi = y_internal(X, Y)."""
        xi = target.y_internal(X, Y)
        _, log_det_y = target.y_cartesian(X, xi)
        return self._log_prob_xi(xi, beta, gaussian) - log_det_y

    def log_prob(self, target, X, beta, Y, gaussian=None) -> Float[Array, ""]:
        """log q(Y | X) (), symmetrised over the relabelings."""
        gaussian = self._gaussian(target, X, beta) if gaussian is None else gaussian
        perms = np.asarray(self.relabelings)
        if len(perms) == 1:
            return self._log_prob0(target, X, beta, Y, gaussian)
        if self.xi_relabelings is None:
            logs = jax.vmap(lambda p: self._log_prob0(target, X, beta, Y[p], gaussian))(perms)
            return jax.nn.logsumexp(logs) - math.log(len(perms))
        # the relabelings permute xi and keep log|det dY/dxi|: one coordinate transform
        xi = target.y_internal(X, Y)
        _, log_det_y = target.y_cartesian(X, xi)
        groups = relabeling_groups(self.xi_relabelings)
        if self.spline is None and worth_it(groups, self.n_y):
            _, mu, L = gaussian
            log_sum = summed_log_prob(xi, beta, mu, L, self.periodic, self.xi_relabelings, groups)
        else:
            logs = jax.vmap(lambda p: self._log_prob_xi(xi[p], beta, gaussian))(
                np.asarray(self.xi_relabelings)
            )
            log_sum = jax.nn.logsumexp(logs)
        return log_sum - math.log(len(perms)) - log_det_y

    def transform(self, target, X, beta, eps, gaussian=None) -> ConditionalSample:
        """Y (n_y,) for the base draw eps (n_y,) ~ N(0, I), with the unsymmetrised log q0(Y|X)
        and whether Y is valid (its internal coordinates give back xi)."""
        gaussian = self._gaussian(target, X, beta) if gaussian is None else gaussian
        xi, log_q0 = self._from_eps(gaussian, beta, eps)
        Y, log_det_y = target.y_cartesian(X, xi)
        periodic = np.asarray(self.periodic, bool)
        back = target.y_internal(X, Y)
        miss = jnp.where(periodic, wrap(back - xi), back - xi)
        valid = jnp.all(jnp.abs(miss) <= 1e-3 * (1.0 + jnp.abs(xi)))
        return ConditionalSample(Y, log_q0 - log_det_y, valid)

    def sample(self, key: PRNGKeyArray, target, X, beta) -> ConditionalSample:
        """One Y ~ q(Y | X) with its exact log-density."""
        k_eps, k_perm = jr.split(key)
        eps = jr.normal(k_eps, (self.n_y,), X.dtype)
        gaussian = self._gaussian(target, X, beta)
        Y, log_q0, valid = self.transform(target, X, beta, eps, gaussian)
        perms = np.asarray(self.relabelings)
        if len(perms) == 1:
            return ConditionalSample(Y, log_q0, valid)
        # a random relabeling of the draw: the density is the mixture over all of them
        Y = Y[jnp.asarray(perms)[jr.randint(k_perm, (), 0, len(perms))]]
        return ConditionalSample(Y, self.log_prob(target, X, beta, Y, gaussian), valid)

    def sample_batch(
        self, key: PRNGKeyArray, target, X: Float[Array, "S n_x"], beta
    ) -> ConditionalSample:
        """One draw for each row of X: :meth:`sample` with a leading batch axis S."""
        keys = jr.split(key, X.shape[0])
        return jax.vmap(lambda k, x: self.sample(k, target, x, beta))(keys, X)


def make_conditional(key: PRNGKeyArray, target, settings: ConditionalSettings):
    """The untrained conditional of ``settings.kind`` for ``target`` (None for "chains").

    Before :func:`coarseflow.predict.fit_to_laplace`: the unit Gaussian in xi around xi_ref.
    """
    if not settings.learned:
        return None
    n_y = target.partition.n_y
    features = XFeatures.of(target)
    n_f = features.size
    n_low = n_y * (n_y - 1) // 2
    k_net, k_spline = jr.split(key)
    net = eqx.nn.MLP(
        n_f,
        2 * n_y + n_low,
        settings.nn_width,
        settings.nn_depth,
        activation=jax.nn.gelu,
        key=k_net,
    )
    net = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias), net, replace_fn=jnp.zeros_like
    )
    spline = None
    if settings.kind == "flow":
        if n_y < 2:
            raise ConfigError(
                "[conditional] kind = 'flow': needs at least 2 fast coordinates "
                f"(n_y = {n_y}); use kind = 'gaussian'"
            )
        from coarseflow.model.flow import start_as_identity

        spline = coupling_flow(
            k_spline,
            base_dist=StandardNormal((n_y,)),
            cond_dim=n_f,
            transformer=RationalQuadraticSpline(knots=settings.knots, interval=settings.interval),
            flow_layers=settings.layers,
            nn_width=settings.nn_width,
            nn_depth=settings.nn_depth,
            nn_activation=jax.nn.gelu,
            invert=False,
        ).bijection
        spline = start_as_identity(spline)
    linear_map = None
    if settings.linear_map:
        check_linear_map(True, "joint", target)  # the target's part; the config checks the rest
        linear_map = LinearMap(target.n_atoms)
    perms = np.asarray(target.y_relabelings(), dtype=np.int64).reshape(-1, n_y)
    xi_perms = target.y_internal_relabelings()
    return LearnedConditional(
        net=net,
        loc=jnp.zeros(n_y),
        log_diag=jnp.zeros(n_y),
        lower=jnp.zeros(n_low),
        spline=spline,
        features=features,
        periodic=tuple(bool(p) for p in target.y_periodic()),
        relabelings=tuple(tuple(int(i) for i in p) for p in perms),
        xi_relabelings=None
        if xi_perms is None or len(perms) == 1
        else tuple(tuple(int(i) for i in p) for p in np.asarray(xi_perms).reshape(-1, n_y)),
        linear_map=linear_map,
    )
