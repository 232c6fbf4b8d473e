"""The learned conditional q(Y|X): exact density, symmetrisation, and the joint / hybrid
estimators' gradients against exact ones on the Gaussian mixture (p(X), p(Y|X) known)."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from coarseflow.errors import ConfigError
from coarseflow.model.conditional import ConditionalSettings, make_conditional
from coarseflow.model.flow import FlowSettings, box_flow, split_trainable
from coarseflow.objectives import conditional_terms, joint_terms, masked_mean
from coarseflow.predict.draw import draw_samples
from coarseflow.predict.settings import PredictionSettings
from coarseflow.targets import GaussianMixture


class _Ring(GaussianMixture):
    """The mixture with its second fast coordinate declared an angle: the tanh window."""

    def y_periodic(self):
        return np.array([False, True])


class _Swap(GaussianMixture):
    """The mixture with its two fast coordinates declared interchangeable: the symmetrisation
    (a density test only: the mixture's energy is not symmetric)."""

    def y_relabelings(self):
        return np.array([[0, 1], [1, 0]])


def _perturbed(conditional, key, scale=0.3):
    """The conditional with every parameter moved randomly (the network's last layer too)."""
    params, static = eqx.partition(conditional, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jr.split(key, len(leaves))
    leaves = [x + scale * jr.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


@pytest.mark.parametrize(
    ("kind", "target_class", "polish"),
    [("gaussian", _Ring, 0), ("gaussian", _Ring, 3), ("flow", _Ring, 0), ("flow", _Swap, 2)],
)
def test_density_is_exact_normalised_and_matches_sampling(kind, target_class, polish):
    target = target_class(n_x=2, n_y=2, seed=1)
    cond = make_conditional(jr.key(0), target, ConditionalSettings(kind=kind, nn_width=8))
    cond = _perturbed(
        eqx.tree_at(lambda c: c.log_diag, cond, jnp.full(2, -0.5, cond.log_diag.dtype)), jr.key(1)
    ).polished(polish)
    X, beta = jnp.array([0.3, -0.2]), 0.7
    draws = jax.vmap(lambda k: cond.sample(k, target, X, beta))(jr.split(jr.key(2), 64))
    again = jax.vmap(lambda y: cond.log_prob(target, X, beta, y))(draws.Y)
    np.testing.assert_allclose(draws.log_q, again, rtol=1e-9, atol=1e-9)
    # integrates to 1 over Y (a grid wide enough for the Gaussian part, the angle's window)
    mean = np.asarray(draws.Y).mean(0)
    g0 = np.linspace(mean[0] - 12, mean[0] + 12, 401)
    g1 = (
        (np.linspace(-np.pi, np.pi, 401) + mean[1])
        if target_class is _Ring
        else np.linspace(mean[1] - 12, mean[1] + 12, 401)
    )
    grid = jnp.asarray(np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2))
    dens = np.exp(
        np.asarray(jax.jit(jax.vmap(lambda y: cond.log_prob(target, X, beta, y)))(grid))
    ).reshape(401, 401)
    mass = np.trapezoid(np.trapezoid(dens, g1, axis=1), g0)
    if target_class is _Ring:  # the window is one turn: the density is one of 2 pi period
        assert abs(mass - 1.0) < 2e-3
    else:
        assert abs(mass - 1.0) < 1e-3


def test_polish_moves_the_mean_to_the_mode_in_one_newton_step_when_the_covariance_is_exact():
    # p_beta(Y|X) = N(B X, cond_width^2 / beta): with L L^T / beta its covariance, a polish step
    # is Newton's on a quadratic and lands on the mode from anywhere; a worse start is kept
    target = GaussianMixture(n_x=2, n_y=3, seed=0)
    cond = _exact_conditional(target)
    cond = eqx.tree_at(lambda c: c.loc, cond, jnp.array([0.8, -1.5, 0.3]))
    X, beta = jnp.array([0.4, -0.9]), 0.6
    mode, _ = target.conditional_gaussian(X, beta)
    off = cond._gaussian(target, X, beta)[1]
    assert np.max(np.abs(off - mode)) > 0.5
    for steps in (1, 3):
        polished = cond.polished(steps)
        np.testing.assert_allclose(polished._gaussian(target, X, beta)[1], mode, atol=1e-10)
    # a covariance twice too wide overshoots: the step is halved, and the mean still improves
    wide = eqx.tree_at(lambda c: c.log_diag, cond, cond.log_diag + 0.5 * np.log(2.0))
    wide = wide.polished(4)
    mu = wide._gaussian(target, X, beta)[1]
    assert np.max(np.abs(mu - mode)) < 0.2 * np.max(np.abs(off - mode))


def test_symmetrised_density_is_invariant():
    target = _Swap(n_x=2, n_y=2, seed=1)
    cond = _perturbed(
        make_conditional(jr.key(0), target, ConditionalSettings(kind="gaussian", nn_width=8)),
        jr.key(3),
    )
    X, Y = jnp.array([0.1, 0.4]), jnp.array([0.7, -1.1])
    a, b = cond.log_prob(target, X, 1.0, Y), cond.log_prob(target, X, 1.0, Y[::-1])
    np.testing.assert_allclose(a, b, rtol=1e-12)


def _exact_conditional(target):
    """A learned Gaussian set to the mixture's exact p(Y|X) = N(B X, cond_width^2 / beta)."""
    cond = make_conditional(jr.key(0), target, ConditionalSettings(kind="gaussian", nn_width=8))
    return eqx.tree_at(
        lambda c: c.log_diag,
        cond,
        jnp.full(target.n_y, jnp.log(target.cond_width), cond.log_diag.dtype),
    )


def test_joint_gradient_equals_exact_marginal_gradient_when_the_conditional_is_exact():
    # with q(Y|X) = p(Y|X), log q(Y|X) + beta u(X, Y) = -log p_beta(X) + const for every Y,
    # so the joint estimator's gradient for q(X) is the exact one sample by sample
    target = GaussianMixture(n_x=2, seed=0, weights=[0.2, 0.3, 0.5])
    lower, upper = target.x_bounds()
    flow = box_flow(
        jr.key(1), lower=lower, upper=upper, settings=FlowSettings(knots=4, layers=2, nn_width=8)
    )
    flow = _perturbed(flow, jr.key(5), 0.05)
    cond = _exact_conditional(target)
    beta = 0.6
    z = flow.base_dist.sample(jr.key(2), (64,))
    params, static = split_trainable((flow, cond))

    def joint(p):
        f, c = eqx.combine(p, static)
        t = joint_terms(f, c, jr.key(3), target, z, beta, force_clip=1e6)
        return masked_mean(t.surrogate, t.ok)

    def exact(p):
        f, _ = eqx.combine(p, static)
        X, log_det = jax.vmap(f.bijection.transform_and_log_det)(z)
        return jnp.mean(-log_det - beta * target.log_marginal(X))

    g_joint = jax.grad(joint)(params)[0]
    g_exact = jax.grad(exact)(params)[0]
    for a, b in zip(jax.tree.leaves(g_joint), jax.tree.leaves(g_exact), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def _gaussian_kl(cond, target, X, beta):
    """Closed form mean over X (S, n_x) of KL(q(Y|X) || p_beta(Y|X)) for a gaussian kind."""

    def one(x):
        _, mu, L = cond._gaussian(target, x, beta)
        cov = L @ L.T / beta
        m_p, s_p = target.conditional_gaussian(x, beta)
        d = m_p - mu
        n = mu.shape[0]
        return 0.5 * (
            jnp.trace(cov) / s_p[0] ** 2
            + d @ d / s_p[0] ** 2
            - n
            + 2 * n * jnp.log(s_p[0])
            - jnp.linalg.slogdet(cov)[1]
        )

    return jnp.mean(jax.vmap(one)(X))


def test_conditional_gradient_matches_the_closed_form_kl_gradient():
    # hybrid's part for q(Y|X): E_X KL(q(Y|X) || p(Y|X)) has a closed form for Gaussians
    target = GaussianMixture(n_x=2, seed=0)
    cond = _perturbed(_exact_conditional(target), jr.key(7), 0.1)
    beta = 0.5
    X = jr.uniform(jr.key(8), (16, 2), minval=-1.0, maxval=1.0)
    Xs = jnp.repeat(X, 4000, axis=0)  # many draws of Y per X: the estimate's noise is small
    params, static = eqx.partition(cond, eqx.is_inexact_array)

    def estimator(p):
        t = conditional_terms(eqx.combine(p, static), jr.key(9), target, Xs, beta, 1e6)
        return masked_mean(t.surrogate, t.ok)

    g_mc = jax.tree.leaves(jax.grad(estimator)(params))
    g_exact = jax.tree.leaves(
        jax.grad(lambda p: _gaussian_kl(eqx.combine(p, static), target, X, beta))(params)
    )
    flat_mc, flat_exact = (
        np.concatenate([g.ravel() for g in g_mc]),
        np.concatenate([g.ravel() for g in g_exact]),
    )
    # stated tolerance: 2 % of the gradient's norm (64,000 draws)
    assert np.linalg.norm(flat_mc - flat_exact) < 0.02 * np.linalg.norm(flat_exact)


@pytest.mark.parametrize(("shift", "polish"), [(0.0, 0), (1.0, 0), (1.0, 1)])
def test_learned_exact_conditional_gives_exact_weights(shift, polish):
    # with q(Y|X) = p(Y|X) the learned route's log-weights are log p(X) - log q(X): the same
    # as the target's own exact conditional, sample for sample in distribution (log Z = 0).
    # A mean shifted off p's breaks that; [prediction] polish_steps = 1 restores it (with the
    # exact covariance one polish step is Newton's on a quadratic)
    target = GaussianMixture(n_x=2, seed=0)
    lower, upper = target.x_bounds()
    flow = box_flow(
        jr.key(1), lower=lower, upper=upper, settings=FlowSettings(knots=4, layers=2, nn_width=8)
    )
    cond = _exact_conditional(target)
    cond = eqx.tree_at(lambda c: c.loc, cond, jnp.full(target.n_y, shift))
    s = draw_samples(
        jr.key(2),
        target,
        flow,
        1.0,
        PredictionSettings(n_samples=4000, polish_steps=polish),
        conditional=cond,
    )
    expected = np.asarray(target.log_marginal(s.X)) - s.log_qX
    if shift and not polish:
        assert np.max(np.abs(s.log_weights - expected)) > 1.0
    else:
        np.testing.assert_allclose(s.log_weights, expected, rtol=1e-9, atol=1e-9)


def test_settings_errors():
    with pytest.raises(ConfigError, match=r"\[conditional\] kind"):
        ConditionalSettings(kind="amortized")
    with pytest.raises(ConfigError, match=r"\[conditional\] nn_width"):
        ConditionalSettings(nn_width=0)
    with pytest.raises(ConfigError, match="needs at least 2 fast coordinates"):
        from coarseflow.targets import DoubleWell

        make_conditional(jr.key(0), DoubleWell(), ConditionalSettings(kind="flow"))


def test_gradients_stay_finite_where_the_angle_window_saturates_other_coordinates():
    # a wide conditional at a small beta: t / pi ~ 100 on the ordinary coordinate, where tanh
    # is exactly 1; the window must not touch it (a masked -inf once made every gradient NaN)
    target = _Ring(n_x=2, n_y=2, seed=1)
    cond = make_conditional(jr.key(0), target, ConditionalSettings(kind="gaussian", nn_width=8))
    cond = eqx.tree_at(lambda c: c.log_diag, cond, jnp.array([3.0, -1.0]))
    params, static = eqx.partition(cond, eqx.is_inexact_array)
    X = jr.uniform(jr.key(1), (32, 2), minval=-1.0, maxval=1.0)

    def loss(p):
        t = conditional_terms(eqx.combine(p, static), jr.key(2), target, X, 0.01, 1e6)
        return masked_mean(t.surrogate, t.ok)

    grads = jax.tree.leaves(jax.grad(loss)(params))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_a_joint_run_resumes_exactly_and_samples_with_its_conditional(
    tmp_path, capsys, monkeypatch, one_model_per_config
):
    import json

    from coarseflow.cli import main
    from coarseflow.config import parse_config
    from coarseflow.run_training import train_from_config
    from coarseflow.runs import RunDir
    from coarseflow.sample_outputs import sample_run
    from coarseflow.workflow import load_run

    raw = {
        "target": {"kind": "gaussian_mixture", "n_x": 2, "support_beta": 0.3},
        "model": {"knots": 4, "layers": 2, "nn_width": 8},
        "conditional": {"kind": "gaussian", "nn_width": 8, "laplace_fits": 4},
        "training": {
            "objective": "joint",
            "batch_size": 32,
            "first_beta_updates": 6,
            "updates_per_beta": 4,
            "tempering_samples": 64,
            # q(Y|X) with an Adam and a guard of its own: their states resume as well
            "conditional_learning_rate": 3e-4,
            # after the ladder: 12 updates of q(Y|X) alone (the guard skips the first 10)
            "refit_updates": 12,
            "refit_draws": 8,
        },
        "tempering": {"kind": "explicit", "betas": [0.3, 0.6, 1.0]},
        "prediction": {"n_samples": 200},
    }
    config = parse_config(raw)
    full = train_from_config(config, tmp_path / "full", progress=False)
    # stopped inside the ladder, and after it before the refit: each resumes to the same model,
    # and so does benchmarks/refit_run.py's refit of a copy of the finished ladder
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from refit_run import refit_copy

    def assert_equal_to_full(model):
        for a, b in zip(
            jax.tree.leaves(eqx.filter((full.flow, full.conditional), eqx.is_inexact_array)),
            jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)

    settings = {"refit_updates": 12, "refit_draws": 8}
    for stop in (2, 3):
        part = tmp_path / f"part{stop}"
        train_from_config(config, part, progress=False, max_betas=stop)
        assert RunDir(part).find_checkpoint()["refitted"] is False
        if stop == 2:
            with pytest.raises(SystemExit, match="ladder is not finished"):
                refit_copy(part, tmp_path / "copy", settings, progress=False)
        else:
            assert refit_copy(part, tmp_path / "copy", settings, progress=False)["updates"] == 12
            copy = load_run(tmp_path / "copy")
            assert_equal_to_full((copy.flow, copy.conditional))
        resumed = train_from_config(config, part, progress=False, resume=True)
        assert_equal_to_full((resumed.flow, resumed.conditional))
    loaded = load_run(tmp_path / "full")
    np.testing.assert_array_equal(loaded.conditional.loc, full.conditional.loc)
    # one energy + force evaluation per sample and update, plus the ladder's samples
    run = RunDir(tmp_path / "full")
    meta = run.find_checkpoint()
    assert meta["refitted"] is True and meta["beta"] == 1.0 and meta["step"] == 6 + 4 + 4 + 12
    assert meta["energy_evals"] == 32 * (6 + 4 + 4 + 12) + 3 * 64
    refit = [r for r in run.read_metrics() if r.get("refit")]
    assert [r["step"] for r in refit] == list(range(14, 26)) and not refit[-1]["skipped"]
    _, samples, beta = sample_run(tmp_path / "full", n=256)
    assert beta == 1.0 and np.all(np.isfinite(samples.log_weights))
    assert np.all(np.isnan(samples.ais_acceptance))  # no AIS: the density is exact
    # the refinement on request (tests/test_refine.py checks its numbers); n = the pilot's 256
    # paths, so that the pilot and the samples share one compiled batch
    _, refined, _ = sample_run(tmp_path / "full", n=256, refine_steps=2)
    assert np.all(np.isfinite(refined.ais_acceptance))
    assert (
        main(["evaluate", str(tmp_path / "full"), "--quiet", "-n", "256", "--refine-steps", "2"])
        == 0
    )
    assert "refined by AIS toward p (2 MALA steps" in capsys.readouterr().out
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["final"]["refined"]["refine_energy_evals"] == (6 * 256 + 256) * 4
    refined_figures = [f for f in summary["figures"] if Path(f).parent.name == "refined"]
    assert refined_figures and all(Path(f).is_file() for f in refined_figures)


def test_objective_and_conditional_must_agree():
    from coarseflow.config import parse_config

    base = {"target": {"kind": "gaussian_mixture"}}
    with pytest.raises(ConfigError, match="set \\[conditional\\] kind"):
        parse_config(base | {"training": {"objective": "joint"}})
    with pytest.raises(ConfigError, match="use objective = 'joint', 'hybrid' or 'fab'"):
        parse_config(base | {"conditional": {"kind": "gaussian"}})
    with pytest.raises(ConfigError, match=r"\[training\] objective"):
        parse_config(base | {"training": {"objective": "fabulous"}})
    with pytest.raises(ConfigError, match=r"\[prediction\] polish_steps: needs a learned"):
        parse_config(base | {"prediction": {"polish_steps": 2}})
