"""The conditional mean force (METHOD.md, section 4, step 3): beta d u / d X averaged over the
kept states of the chains on Y | X (:mod:`coarseflow.samplers.conditional`), an estimate of

    F(X) = E_{Y ~ p(Y|X)} [ beta grad_X u(X, Y) ] = -grad_X log p_beta(X),

the *minus* score of the marginal, which the reverse-KL surrogate uses as a constant.

and its control variate (:func:`control_variate_forces`). Pure JAX, as the chains: jit and vmap
it from the caller.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.samplers.conditional import ChainSettings, _run_chains
from coarseflow.samplers.kernels import EnergyXY


class MeanForce(NamedTuple):
    """Result of :func:`mean_force` for one X (vmapped: a leading batch axis on every field).

    force (n_x,): mean over the kept states of all chains of beta grad_X u(X, Y), i.e. minus the
        score of p_beta(X). States whose energy or gradients are not finite are left out; if all
        are, force is NaN.
    y_last (n_chains, n_y): final chain states (can seed the next call).
    acceptance (): mean acceptance probability over all steps and chains. BAOAB has no Metropolis
        test: it reports the fraction of steps not undone for a non-finite energy (1.0 normally).
    n_nonfinite () int: kept states left out of the mean.
    grad_y_mean (n_y,): mean of beta grad_Y u over the same states; zero in expectation under
        p(Y|X), so it is a control variate for the force (:func:`control_variate_forces`).
    cov_xy (n_x, n_y), cov_yy (n_y, n_y): centred sums of products of beta grad_X u and
        beta grad_Y u over the same states (covariance times the number of states).
    heating (): mean beta u over the last n_keep // 2 kept states minus that over the first
        n_keep // 2 (k_B T at the chains' temperature; NaN if n_keep < 2). The warm start leaves
        Y near a minimum of u, and the chains' energy then rises towards equilibrium (about
        n_y / 2 above the minimum for near-harmonic Y): a clearly positive value means the
        kept states are still heating up, n_burn is too short, and the mean force leans
        towards that of the minimum, i.e. is biased.
    """

    force: Float[Array, " n_x"]
    y_last: Float[Array, "n_chains n_y"]
    acceptance: Float[Array, ""]
    n_nonfinite: Array
    grad_y_mean: Float[Array, " n_y"]
    cov_xy: Float[Array, "n_x n_y"]
    cov_yy: Float[Array, "n_y n_y"]
    heating: Float[Array, ""]
    n_evals: Array  # () energy + gradient evaluations this call made (warm start included)


def control_variate_forces(mf: MeanForce, ridge: float = 1e-8) -> Float[Array, "S n_x"]:
    """Mean forces (S, n_x) with the zero-mean control variate beta grad_Y u subtracted.

    Under p(Y|X), E[grad_Y u] = 0 (integrate the Y-derivative of exp(-beta u) by parts), so
    F_cv = mean(beta grad_X u) - C mean(beta grad_Y u) has the mean of the plain estimate for
    any fixed C (n_x, n_y). C = S_xy S_yy^-1, pooled over the batch (within-X covariances), is
    the least-squares choice: it removes the part of the force noise that moves with the fast
    variables (for a molecule: bond and angle forces shared by a coarse-grained atom and its
    fast neighbours; for the Gaussian mixture all of the noise). ``mf`` is a batched MeanForce
    (leading axis S); rows whose force is not finite are left out of C and stay NaN.
    """
    ok = jnp.all(jnp.isfinite(mf.force), axis=-1)
    ok = (
        ok
        & jnp.all(jnp.isfinite(mf.cov_yy), axis=(-2, -1))
        & jnp.all(jnp.isfinite(mf.cov_xy), axis=(-2, -1))
    )
    s_xy = jnp.sum(jnp.where(ok[:, None, None], mf.cov_xy, 0.0), axis=0)
    s_yy = jnp.sum(jnp.where(ok[:, None, None], mf.cov_yy, 0.0), axis=0)
    n_y = s_yy.shape[0]
    scale = jnp.trace(s_yy) / n_y
    # solve C S_yy = S_xy with a small ridge so an (almost) singular S_yy stays harmless
    c = jnp.linalg.solve(s_yy + ridge * jnp.maximum(scale, 1e-30) * jnp.eye(n_y), s_xy.T).T
    c = jnp.where(jnp.all(jnp.isfinite(c)), c, 0.0)
    return mf.force - jnp.einsum("ij,sj->si", c, jnp.where(ok[:, None], mf.grad_y_mean, 0.0))


def mean_force(
    key: PRNGKeyArray,
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta,
    y0: Float[Array, "*n_chains n_y"],
    settings: ChainSettings,
    mass: Float[Array, " n_y"] | None = None,
) -> MeanForce:
    """Estimate F(X) = E_{Y ~ p(Y|X)}[beta grad_X u(X, Y)] = -grad_X log p_beta(X).

    energy_xy(X (n_x,), Y (n_y,)) -> reduced energy u (); the chains target exp(-beta u(X, .)).
    y0: (n_y,) or (n_chains, n_y) starting states; the warm start
    (:func:`~coarseflow.samplers.conditional.minimize_y` with the settings' ``warm_start_*``) is
    applied from there. mass: (n_y,) per-coordinate masses, None
    for ones. beta: scalar, may be traced. Only kept states (after burn-in) enter the mean; see
    :class:`MeanForce` for non-finite states. With MALA and BAOAB, grad_X comes from the same
    gradient evaluation as the chain's grad_Y; with HMC it costs one extra evaluation per kept
    state. Pure JAX: jit and vmap it (over key, X, y0) from the caller.
    """
    y_last, acceptance, (gx, gy, u, finite), n_evals = _run_chains(
        key, energy_xy, X, beta, y0, settings, mass, with_force=True
    )
    n_kept = settings.n_chains * settings.n_keep
    n_finite = jnp.sum(finite.astype(jnp.int32))
    beta = jax.lax.stop_gradient(jnp.asarray(beta, gx.dtype))
    n = jnp.maximum(n_finite, 1)
    # gradient rows of all steps (zeros where not kept or not finite): centre over kept rows
    w = finite.astype(gx.dtype)[:, None]
    gx, gy = beta * gx, beta * gy
    mean_x, mean_y = jnp.sum(gx, 0) / n, jnp.sum(gy, 0) / n
    force = jnp.where(n_finite > 0, mean_x, jnp.nan)
    dx, dy = (gx - mean_x) * w, (gy - mean_y) * w
    heating = _heating(beta * u, finite, settings)
    return MeanForce(
        force,
        y_last,
        acceptance,
        n_kept - n_finite,
        mean_y,
        dx.T @ dy,
        dy.T @ dy,
        heating,
        jnp.asarray(n_evals),
    )


def _heating(beta_u: Float[Array, " R"], finite: Array, settings: ChainSettings) -> Array:
    """Mean beta u over the last n_keep // 2 kept states minus the first n_keep // 2 ().

    beta_u and finite are per step of every chain (R = n_chains * n_steps, chains outer).
    """
    half = settings.n_keep // 2
    step = jnp.tile(jnp.arange(settings.n_steps), settings.n_chains)
    k = (step - settings.n_burn) // settings.thin  # index of the kept state (where kept)
    first = finite & (k < half)
    last = finite & (k >= settings.n_keep - half)

    def mean(mask):
        n = jnp.sum(mask)
        return jnp.where(n > 0, jnp.sum(jnp.where(mask, beta_u, 0.0)) / jnp.maximum(n, 1), jnp.nan)

    return mean(last) - mean(first)
