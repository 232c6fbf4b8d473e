"""Annealed importance sampling against exact normalising constants and moments."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import integrate

from coarseflow.samplers.annealing import annealed_importance


def _run(log_gamma, d, n_steps, step_size, n=4000, seed=0, n_leapfrog=1):
    def one(k):
        return annealed_importance(k, log_gamma, d, n_steps, step_size, n_leapfrog=n_leapfrog)

    out = jax.jit(jax.vmap(one))(jr.split(jr.key(seed), n))
    return np.asarray(out.z), np.asarray(out.log_weight), np.asarray(out.acceptance)


def test_weights_are_exactly_constant_when_gamma_is_the_base_up_to_a_factor():
    def log_gamma(z):  # 7 * N(z; 0, I)
        return -0.5 * jnp.sum(z**2) - 1.5 * jnp.log(2 * jnp.pi) + jnp.log(7.0)

    _, lw, acc = _run(log_gamma, 3, 25, 0.8, n=200)
    np.testing.assert_allclose(lw, np.log(7.0), rtol=0, atol=1e-12)
    assert np.all(acc > 0.5)


def _quartic(z):
    # separable, non-Gaussian, off-centre: exp(-(z - 1)^4 / 4 - (z - 1)^2 / 2) per coordinate
    s = z - 1.0
    return -jnp.sum(0.25 * s**4 + 0.5 * s**2)


def _quartic_exact(d):
    one = integrate.quad(lambda s: np.exp(-0.25 * s**4 - 0.5 * s**2), -np.inf, np.inf)[0]
    mean_s2 = (
        integrate.quad(lambda s: s**2 * np.exp(-0.25 * s**4 - 0.5 * s**2), -np.inf, np.inf)[0] / one
    )
    return d * np.log(one), mean_s2


@pytest.mark.parametrize("n_steps, n_leapfrog", [(0, 1), (10, 1), (60, 1), (10, 4)])
def test_unbiased_normalising_constant_and_moments(n_steps, n_leapfrog):
    d = 3
    log_z, mean_s2 = _quartic_exact(d)
    z, lw, _ = _run(_quartic, d, n_steps, 0.6, n=8000, n_leapfrog=n_leapfrog)
    w = np.exp(lw - log_z)
    # E[w] = 1 exactly; compare within 5 standard errors
    assert abs(np.mean(w) - 1.0) < 5 * np.std(w) / np.sqrt(len(w))
    # E[w f(z_K)] / E[w] = <f>_gamma: the mean and the second moment about 1
    wn = w / np.sum(w)
    ess = 1.0 / np.sum(wn**2)
    np.testing.assert_allclose(wn @ z, 1.0, atol=6 / np.sqrt(ess))
    np.testing.assert_allclose(wn @ ((z - 1.0) ** 2), mean_s2, atol=8 / np.sqrt(ess))


def test_variance_of_the_log_weight_falls_as_the_path_lengthens():
    stds = [np.std(_run(_quartic, 4, k, 0.6, n=2000)[1]) for k in (0, 10, 100)]
    assert stds[0] > 2 * stds[1] > 0 and stds[1] > 2 * stds[2]
    # HMC's leapfrog steps carry a path further than MALA's single step at each temperature
    assert np.std(_run(_quartic, 4, 10, 0.6, n=2000, n_leapfrog=4)[1]) < stds[1]


def test_a_start_outside_the_support_has_zero_weight():
    def log_gamma(z):  # support z[0] > 0 only
        return jnp.where(z[0] > 0, -0.5 * jnp.sum(z**2), -jnp.inf)

    _, lw, _ = _run(log_gamma, 2, 20, 0.5, n=2000)
    outside = ~np.isfinite(lw)
    assert 0.4 < outside.mean() < 0.6 and np.all(lw[outside] == -np.inf)
    # Z = ∫_{z0 > 0} exp(-|z|^2 / 2) dz = 2 pi / 2
    w = np.exp(lw)
    assert abs(np.mean(w) - np.pi) < 5 * np.std(w) / np.sqrt(len(w))
