"""The benchmark scripts' helpers: the markdown section they rewrite, the overrides they parse
and the evaluation count they report (the scripts themselves run outside CI)."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for name in (
        "_markdown",
        "alanine_dipeptide",
        "importance_weights",
        "weight_variance",
        "conditional_capacity",
        "parameter_average",
        "refinement",
    ):
        sys.modules.pop(name, None)


def mixture_flow_and_conditional():
    """The 2-d Gaussian mixture, an untrained flow q(X) on its box, an untrained Gaussian
    q(Y|X) whose mean is already exact, and the log of p(Y|X)'s width (set it as log_diag for
    the exact conditional)."""
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    from coarseflow.model.conditional import ConditionalSettings, make_conditional
    from coarseflow.model.flow import box_flow
    from coarseflow.targets import GaussianMixture

    target = GaussianMixture(n_x=2, seed=0)
    lower, upper = target.x_bounds()
    flow = box_flow(jr.key(0), lower=lower, upper=upper)
    cond = make_conditional(jr.key(0), target, ConditionalSettings(kind="gaussian", nn_width=8))
    log_width = jnp.full(target.n_y, np.log(target.cond_width), cond.log_diag.dtype)
    return target, flow, cond, log_width


def test_replace_section_appends_then_replaces_only_its_own_block(tmp_path):
    from _markdown import replace_section

    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n<!-- other:begin -->\nkeep\n<!-- other:end -->\n")
    replace_section(doc, "ala", "stamp 1", "| a |\n|---|")
    replace_section(doc, "ala", "stamp 2", "| b |\n|---|")
    text = doc.read_text()
    assert text.count("<!-- ala:begin -->") == 1 and "stamp 1" not in text
    assert "stamp 2\n\n| b |\n|---|\n<!-- ala:end -->" in text
    assert "<!-- other:begin -->\nkeep\n<!-- other:end -->" in text
    for _ in range(2):  # the second call replaces: the table is not read as a regex template
        replace_section(tmp_path / "new.md", "ala", "s", r"a \1 b")
    assert (tmp_path / "new.md").read_text().count(r"a \1 b") == 1


def test_overrides_are_parsed_as_toml_values():
    from alanine_dipeptide import _without, apply_overrides
    from importance_weights import parse_variant

    raw = apply_overrides(
        {"training": {"batch_size": 256}},
        [
            "training.batch_size=64",
            'prediction.conditional="laplace"',
            "tempering.max_kl_increase=false",
            "training.learning_rate=3e-4",
            'tempering={kind = "explicit", betas = [0.5, 1.0]}',
        ],
    )
    assert raw == {
        "training": {"batch_size": 64, "learning_rate": 3e-4},
        "prediction": {"conditional": "laplace"},
        "tempering": {"kind": "explicit", "betas": [0.5, 1.0]},
    }
    assert parse_variant("ais_paths=16, ais_step_size=0.5") == {
        "ais_paths": 16,
        "ais_step_size": 0.5,
    }
    assert _without(
        ["--set", "a=1", "--write", "x.md", "--section=s", "-n", "5"], "--write", "--section"
    ) == ["--set", "a=1", "-n", "5"]


def test_evaluation_count_from_the_settings():
    from alanine_dipeptide import evaluations

    raw = {
        "chains": {
            "kernel": "baoab",
            "n_chains": 4,
            "n_burn": 50,
            "n_keep": 25,
            "thin": 2,
            "warm_start_steps": 30,
        },
        "training": {"batch_size": 256, "tempering_samples": 2048},
        "prediction": {"minimize_steps": 300, "newton_steps": 5, "ais_steps": 100, "ais_paths": 16},
    }
    per_x = 30 + 4 * (50 + 25 * 2)  # warm start + chains, per sample of X
    per_y = 300 + 51 * (5 + 1) + 100 * 16  # descent, Hessians (51 gradients each), AIS paths
    expected = 10 * 256 * per_x + 2 * 2048 * per_x + 100 * per_y
    assert evaluations(raw, updates=10, n_betas=2, n_predict=100) == expected
    raw["prediction"]["conditional"] = "laplace"  # no AIS steps
    assert evaluations(raw, 10, 2, 100) == expected - 100 * 100 * 16


def test_weight_variance_sees_an_exact_conditional_and_a_wrong_one():
    """weight_variance's (M, K) log-weights: with q(Y|X) = p(Y|X) exactly (the mixture's
    N(B X, cond_width^2 / beta)) the K weights of each X are equal, whatever q(X) is (an
    untrained flow here), so the conditional ESS is 1; a conditional twice too wide is not."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from conditional_capacity import conditional_ess
    from weight_variance import _ess_fraction, _log_weights

    target, flow, cond, log_width = mixture_flow_and_conditional()
    exact = eqx.tree_at(lambda c: c.log_diag, cond, log_width)
    wide = eqx.tree_at(lambda c: c.log_diag, cond, log_width + np.log(2.0))
    beta = jnp.asarray(1.0)
    log_w = np.asarray(_log_weights(flow, exact, target, jr.key(1), beta, 64, 16))
    assert log_w.shape == (64, 16)
    np.testing.assert_allclose(log_w - log_w[:, :1], 0.0, atol=1e-4)
    assert min(_ess_fraction(row) for row in log_w) > 0.9999
    log_w = np.asarray(_log_weights(flow, wide, target, jr.key(1), beta, 64, 16))
    assert np.mean([_ess_fraction(row) for row in log_w]) < 0.9
    # conditional_capacity's per-X ESS: the same verdicts from its own draws
    assert np.min(conditional_ess(exact, flow, target, jr.key(2), beta, 64, 16)) > 0.9999
    assert np.mean(conditional_ess(wide, flow, target, jr.key(2), beta, 64, 16)) < 0.9


def test_conditional_capacity_chains_keep_an_exact_conditional_and_correct_a_wide_one():
    """conditional_capacity's mcmc arm: MALA chains in q's latent, started from q(Y|X), leave
    the mixture's exact p(Y|X) = N(B X, cond_width^2) as it is and take draws of a
    conditional twice too wide back to its width (the standardised residuals' sd from 2 to
    about 1), with a sensible acceptance."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from conditional_capacity import _chain_draws

    target, flow, cond, log_width = mixture_flow_and_conditional()
    beta = jnp.asarray(1.0)

    def residual_sd(log_diag, n_steps):
        q = eqx.tree_at(lambda c: c.log_diag, cond, log_diag)
        X, Y, acceptance = _chain_draws(q, jr.key(3), flow, target, beta, 400, n_steps, 0.5)
        mean = jnp.asarray(X) @ target.B.T
        return float(np.std((Y - mean) / target.cond_width)), float(acceptance)

    assert abs(residual_sd(log_width, 0)[0] - 1.0) < 0.05
    sd, acceptance = residual_sd(log_width, 40)
    assert abs(sd - 1.0) < 0.05 and acceptance > 0.8
    assert abs(residual_sd(log_width + np.log(2.0), 0)[0] - 2.0) < 0.1
    sd, acceptance = residual_sd(log_width + np.log(2.0), 40)
    assert abs(sd - 1.0) < 0.1 and acceptance > 0.3


def test_parameter_average_weights_are_exact_for_an_exact_conditional():
    """parameter_average's one-shot log-weights: with the mixture's exact q(Y|X) they are
    log p(X) - log q(X) of the same draws X (p normalised, Z = 1 at beta = 1), and its ESS
    fraction is that of those weights."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from parameter_average import ess_fraction, one_shot_log_weights

    from coarseflow.model.flow import split_trainable

    target, flow, cond, log_width = mixture_flow_and_conditional()
    exact = eqx.tree_at(lambda c: c.log_diag, cond, log_width)
    beta, key = jnp.asarray(1.0), jr.key(10**6)
    log_w = np.asarray(one_shot_log_weights(flow, exact, key, target, beta, 500))
    X, log_q = flow.sample_and_log_prob(jr.fold_in(key, 0), (500,))
    np.testing.assert_allclose(log_w, target.log_marginal(X) - log_q, atol=1e-8)
    w = np.exp(log_w - log_w.max())
    params, static = split_trainable((flow, exact))
    assert ess_fraction(params, static, target, beta, 500) == pytest.approx(
        w.sum() ** 2 / (w**2).sum() / 500, rel=1e-9
    )


def test_refinement_sets_are_unbiased_for_z_and_count_their_evaluations():
    """refinement's one-shot (K = 0) and refined (K = 4) draw sets on a wide mixture (Z = 1 at
    beta = 1; its exact q(Y|X) and an untrained q(X): ESS about 0.8, 0.89 refined): log Z
    within 4 standard errors of 0, and the refinement's evaluations per sample are its paths'
    (pilot included) over the samples."""
    from types import SimpleNamespace

    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from refinement import one_set

    from coarseflow.model.conditional import ConditionalSettings, make_conditional
    from coarseflow.model.flow import box_flow
    from coarseflow.predict.refine import _PILOT_PATHS
    from coarseflow.predict.settings import PredictionSettings
    from coarseflow.targets import GaussianMixture

    target = GaussianMixture(n_x=2, width=1.0, support_beta=1.0, seed=0)
    lower, upper = target.x_bounds()
    flow = box_flow(jr.key(0), lower=lower, upper=upper)
    cond = make_conditional(jr.key(0), target, ConditionalSettings(kind="gaussian", nn_width=8))
    log_width = jnp.full(target.n_y, np.log(target.cond_width), cond.log_diag.dtype)
    exact = eqx.tree_at(lambda c: c.log_diag, cond, log_width)
    config = SimpleNamespace(prediction=PredictionSettings(batch_size=1000))
    loaded = (config, target, flow, exact, {"beta": 1.0})
    for steps in (0, 4):
        result = one_set(loaded, steps, 0, 4000)
        standard_error = np.sqrt((1.0 / result["ess"] - 1.0) / 4000)
        assert abs(result["log_Z"]) < 4 * standard_error, (steps, result)
    assert one_set(loaded, 0, 1, 4000)["evals_per_sample"] == 1.0
    assert result["evals_per_sample"] == (6 * _PILOT_PATHS + 4000) * (4 + 2) / 4000
    assert 0.0 < result["acceptance"] < 1.0
