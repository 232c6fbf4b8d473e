"""The grad_Y control variate keeps the mean force's expectation and removes its noise."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from coarseflow.samplers import ChainSettings, control_variate_forces
from coarseflow.targets import GaussianMixture
from coarseflow.training.losses import chain_states

SETTINGS = ChainSettings(
    kernel="mala", step_size=0.05, n_chains=4, n_burn=20, n_keep=10, warm_start_steps=5
)


def test_gaussian_mixture_force_is_exact_with_the_control_variate():
    target = GaussianMixture(n_x=3, seed=2)
    X = jnp.asarray(target.sample(jr.key(0), 64))[:, :3]
    beta = 0.7
    mf = jax.jit(lambda k, x: chain_states(k, target, x, beta, SETTINGS))(jr.key(1), X)
    exact = -jax.vmap(lambda x: target.score(x, beta))(X)
    plain_err = np.max(np.abs(mf.force - exact))
    cv_err = np.max(np.abs(control_variate_forces(mf) - exact))
    print(f"plain {plain_err:.3g}, control variate {cv_err:.3g}")
    # grad_X u - (-B^T grad_Y u) is constant in Y here, so the noise cancels exactly
    assert plain_err > 1.0
    assert cv_err < 1e-6 * np.max(np.abs(exact))


def test_control_variate_is_unbiased_on_a_nonlinear_coupling():
    # u = X^2/2 + k (Y - sin X)^2 / 2 + Y^4/4: the mean force is beta X + E[...] ; compare the
    # averages of both estimators over many independent repetitions at the same X
    def energy_xy(X, Y):
        return 0.5 * jnp.sum(X**2) + 2.0 * jnp.sum((Y - jnp.sin(X)) ** 2) + 0.25 * jnp.sum(Y**4)

    from coarseflow.samplers import mean_force

    X = jnp.array([0.4, -1.1])
    settings = ChainSettings(kernel="mala", step_size=0.3, n_chains=4, n_burn=50, n_keep=20)

    @jax.jit
    def batch(key):
        keys = jr.split(key, 256)
        return jax.vmap(lambda k: mean_force(k, energy_xy, X, 1.0, jnp.zeros(2), settings))(keys)

    mf = batch(jr.key(3))
    plain = np.asarray(mf.force)
    cv = np.asarray(control_variate_forces(mf))
    diff = cv.mean(0) - plain.mean(0)
    se = np.sqrt(plain.var(0) / len(plain) + cv.var(0) / len(cv))
    print("plain sd", plain.std(0), "cv sd", cv.std(0), "diff", diff, "se", se)
    assert np.all(np.abs(diff) < 5 * se)
    assert np.all(cv.std(0) < 0.5 * plain.std(0))
