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
        "conditional_network",
        "general_case",
        "parameter_average",
        "refinement",
        "against_reference",
        "conditional_by_basin",
        "conditional_polish",
        "conditional_ceiling",
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
    """refinement's one-shot (K = 0) and refined (K = 4, MALA and HMC) draw sets on a wide
    mixture (Z = 1 at beta = 1; its exact q(Y|X) and an untrained q(X): ESS about 0.8, 0.89
    refined): log Z
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
    hmc = one_set(loaded, 4, 0, 4000, leapfrog=3)  # HMC steps of 3 leapfrog steps
    assert abs(hmc["log_Z"]) < 4 * np.sqrt((1.0 / hmc["ess"] - 1.0) / 4000), hmc
    assert hmc["evals_per_sample"] == (6 * _PILOT_PATHS + 4000) * (4 * 3 + 2) / 4000
    # q(Y|X)'s mean moved off p's, polished by 2 steps at each X ([prediction] polish_steps):
    # still unbiased, 3 more evaluations per X, one-shot and at each point of a path
    shifted = eqx.tree_at(lambda c: c.loc, exact, jnp.full(target.n_y, 0.5))
    loaded = (config, target, flow, shifted, {"beta": 1.0})
    for steps in (0, 4):
        polished = one_set(loaded, steps, 0, 4000, polish=2)
        assert abs(polished["log_Z"]) < 4 * np.sqrt((1.0 / polished["ess"] - 1.0) / 4000)
    assert one_set(loaded, 0, 1, 4000, polish=2)["evals_per_sample"] == 4.0
    assert polished["evals_per_sample"] == (6 * _PILOT_PATHS + 4000) * (5 * 4 + 1) / 4000


def wrapped(angles):
    """Angles (any shape) wrapped to [-pi, pi) radians."""
    import numpy as np

    return (angles + np.pi) % (2 * np.pi) - np.pi


def test_split_half_floor_is_small_for_one_distribution_shrinks_with_n_and_sees_a_shift():
    """Four ladders of one (phi, psi) distribution: a small floor, larger at fewer frames of one
    half; n fresh draws of it (a perfect model) score within the aim, 2x the (half, n) floor,
    not within 2x the (n, n) one (the same pseudo-counts dominate both of its histograms at small
    n); ladders 2 and 3 moved by pi in phi (disjoint from 0 and 1): a floor near log 2; the same
    move of ladders 1 and 3 (one in each half) leaves the halves alike."""
    import numpy as np
    from against_reference import ANGLES, split_half_js

    from coarseflow.analysis.metrics import histogram_kl_js

    rng = np.random.default_rng(0)
    chain = np.tile(np.arange(4), 5000)  # time-major, as coarseflow reference writes it

    def draw(n):
        return wrapped(rng.normal([-1.2, 2.4], 0.3, (n, 2)))

    angles = draw(chain.size)
    floor = split_half_js(angles, chain)
    assert floor < 0.02
    at_n = [split_half_js(angles, chain, None, n) for n in (500, 2000)]
    assert at_n[0] > at_n[1] > floor
    for n, half_n in zip((500, 2000), at_n, strict=True):
        perfect = histogram_kl_js(angles, draw(n), 64, ANGLES)[1]
        assert half_n / 2 < perfect < 2 * half_n
        assert perfect > 2 * split_half_js(angles, chain, n, n)
    assert split_half_js(angles, chain, 10**6, 10**6) == floor  # n above a half's: all frames

    def moved(ladders):
        out = angles.copy()
        out[np.isin(chain, ladders), 0] = wrapped(out[np.isin(chain, ladders), 0] + np.pi)
        return out

    assert 0.5 < split_half_js(moved([2, 3]), chain) <= np.log(2)
    assert split_half_js(moved([1, 3]), chain) < 0.02
    with pytest.raises(ValueError, match="2 ladders"):
        split_half_js(angles, np.zeros(len(angles), int))


def test_split_half_tv_falls_with_the_draws_and_sees_disjoint_halves():
    """The TV floor of one (phi, psi) distribution at n draws: what n fresh draws score (within
    a fifth), smaller at more draws; halves moved apart by pi in phi: TV 1 at every n."""
    import numpy as np
    from against_reference import CMT_BINS, ramachandran_tv, split_half_tv

    rng = np.random.default_rng(3)
    chain = np.tile(np.arange(4), 20000)
    angles = wrapped(rng.normal([-1.2, 2.4], 0.3, (chain.size, 2)))
    floors = [split_half_tv(angles, chain, n) for n in (1000, 10000)]
    assert floors[0] > floors[1] > 0
    for n, floor in zip((1000, 10000), floors, strict=True):
        fresh = wrapped(rng.normal([-1.2, 2.4], 0.3, (n, 2)))
        assert ramachandran_tv(angles, fresh, bins=CMT_BINS) == pytest.approx(floor, rel=0.2)
    moved = angles.copy()
    moved[chain >= 2, 0] = wrapped(moved[chain >= 2, 0] + np.pi)
    assert split_half_tv(moved, chain, 1000) == pytest.approx(1.0)


def test_histogram_tv_is_zero_for_identical_sets_and_one_for_disjoint_ones():
    import numpy as np
    from against_reference import ramachandran_tv

    rng = np.random.default_rng(1)
    a = rng.uniform(-np.pi, 0.0, (1000, 2))  # phi < 0
    b = a * [-1.0, 1.0] + [1e-3, 0.0]  # phi > 0, mirrored off the bin edge at 0
    assert ramachandran_tv(a, a) == 0.0
    assert ramachandran_tv(a, b) == pytest.approx(1.0, abs=1e-12)
    # b weighted 0 and a's duplicates each half a weight: the same histogram as a
    both = np.concatenate([a, a, b])
    weights = np.concatenate([np.full(2000, 0.5), np.zeros(1000)])
    assert ramachandran_tv(a, both, weights) == pytest.approx(0.0, abs=1e-12)
    # half of the weight on the disjoint set
    assert ramachandran_tv(a, np.concatenate([a, b])) == pytest.approx(0.5, abs=1e-12)


def test_every_residue_is_scored_and_samples_equal_to_the_reference_score_zero(tmp_path):
    """ACE-GLY-ALA-PRO-NME (glycine, pre-proline, proline) whose samples are the reference's
    own frames, equally weighted: per residue its class's basins, populations equal to the
    reference's (z = 0), KL = JS = TV = 0, the reference's errors the evaluation's; one table
    row per residue and per residue and basin. Without a chain array the floors and the
    reference's errors are NaN."""
    from types import SimpleNamespace

    import numpy as np

    pytest.importorskip("openmm")
    pytest.importorskip("PeptideBuilder")
    pytest.importorskip("mdtraj")
    from against_reference import format_run, residue_scores
    from test_peptide_report import KINDS, P, SyntheticReport
    from test_ramachandran import CENTRES, sample_basins

    from coarseflow.reference import load_reference
    from coarseflow.targets.molecule import Molecule, peptide

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(peptide.CACHE_ENV, str(tmp_path / "cache"))
        pdb, _ = peptide.peptide_pdb(tmp_path / "gap.pdb", peptide.parse_sequence("GAP"))
    rng = np.random.default_rng(2)
    chain = np.tile(np.arange(4), 500)
    drawn = [sample_basins(rng, CENTRES[kind], P[kind], chain.size)[:2] for kind in KINDS]
    phi, psi = (np.stack([d[i] for d in drawn], axis=1) for i in (0, 1))
    np.savez(tmp_path / "ref.npz", phi=phi, psi=psi, chain=chain)
    report = SyntheticReport(Molecule(pdb=str(pdb), reference=str(tmp_path / "ref.npz")))
    samples = SimpleNamespace(x=np.concatenate([phi, psi], axis=1), log_weights=np.zeros(2000))
    metrics = report.metrics(samples, np.full(2000, 1 / 2000), 1.0)
    residues = residue_scores(report, samples, metrics, load_reference(tmp_path / "ref.npz"), 0)

    assert [r["residue"] for r in residues] == ["GLY2", "ALA3", "PRO4"]
    assert [r["class"] for r in residues] == list(KINDS)
    for r, record in zip(residues, metrics["ramachandran_basins"], strict=True):
        # n above a half's 1000 frames: every floor is the all-frames one
        assert r["n"] == 2000 and r["floor_n"] == r["floor_nn"] == r["floor"] > 0
        zero = pytest.approx(0.0, abs=1e-12)
        assert (r["kl"], r["js"], r["ratio"], r["tv"], r["tv_raw"]) == (zero,) * 5
        assert r["tv_cmt"] == zero and r["tv_cmt_floor"] > 0
        for b in r["basins"].values():
            assert b["reweighted"] == pytest.approx(b["reference"], abs=1e-12)
            assert b["reference_err"] > 0 or b["reference"] == 0.0
        errors = [b["reference_err"] for b in record["basins"].values()]
        assert [b["reference_err"] for b in r["basins"].values()] == pytest.approx(errors)
    assert list(residues[2]["basins"]) == ["C7eq/PII", "alpha_R", "other"]

    header = {"ess_fraction": 1.0, "n_samples": 2000, "pareto_k": 0.0}
    table = format_run("gap", metrics | header, residues)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 3 + sum(len(r["basins"]) for r in residues)
    assert "| ALA3 | zeta | " in table and "| +0.0 |" in table

    weightless = report.metrics(samples, np.zeros(2000), 1.0)  # no sample has weight
    for r in residue_scores(report, samples, weightless, load_reference(tmp_path / "ref.npz"), 0):
        assert np.isnan(r["kl"]) and np.isnan(r["js"]) and np.isnan(r["ratio"])
        assert all(np.isnan(b["reweighted"]) for b in r["basins"].values())

    bare = residue_scores(report, samples, metrics, {"phi": phi, "psi": psi}, 0)
    assert all(np.isnan(r["floor"]) and np.isnan(r["ratio"]) for r in bare)
    assert "± nan | +nan |" in format_run("gap", metrics | header, bare)


def test_basin_rows_share_energy_and_weights_per_basin():
    import numpy as np
    from conditional_by_basin import basin_rows

    labels = np.array([0, 0, 1, 1, 1, 2])
    energy = np.array([1.0, 3.0, 10.0, 20.0, 30.0, 5.0])
    log_w = np.array([0.0, -2.0, -10.0, -20.0, -30.0, 1.0])
    rows = basin_rows(("a", "b", "c", "empty"), labels, energy, log_w)
    assert [r["n"] for r in rows] == [2, 3, 1, 0]
    np.testing.assert_allclose([r["share"] for r in rows], [2 / 6, 3 / 6, 1 / 6, 0])
    np.testing.assert_allclose([r["energy"] for r in rows[:3]], [2.0, 20.0, 5.0])
    # log-weights relative to the largest of all (1.0, in basin c)
    np.testing.assert_allclose([r["log_w_max"] for r in rows[:3]], [-1.0, -11.0, 0.0])
    np.testing.assert_allclose([r["log_w_median"] for r in rows[:3]], [-2.0, -21.0, 0.0])
    assert np.isnan(rows[3]["energy"]) and np.isnan(rows[3]["log_w_max"])


def test_general_case_network_size_reaches_the_learned_conditional_only():
    import argparse

    from general_case import network_size, variant

    assert network_size("512x3") == (512, 3)
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxDEPTH"):
        network_size("512")
    raw = {"conditional": {"kind": "gaussian"}}
    fab = variant(raw, "fab", 1, {}, "gaussian", (512, 3))["conditional"]
    assert (fab["nn_width"], fab["nn_depth"], fab["seed"]) == (512, 3, 1)
    chains = variant(raw, "mean_force", 1, {}, "gaussian", (512, 3))["conditional"]
    assert chains == {"kind": "chains", "seed": 1}
    assert "nn_width" not in variant(raw, "fab", 1, {})["conditional"]


def test_conditional_ceiling_finds_the_mean_and_width_that_p_has():
    """conditional_ceiling's figures on the mixture, whose p(Y|X) is Gaussian: the exact
    q(Y|X) has ESS 1 and no offset; moved by two widths it loses most of its ESS, which
    moving it to p's weighted mean gives back; too wide, the scale that undoes it is best."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from conditional_ceiling import ceiling

    target, flow, cond, log_width = mixture_flow_and_conditional()
    beta = jnp.asarray(1.0)
    X = flow.sample(jr.key(3), (3,))
    exact = eqx.tree_at(lambda c: c.log_diag, cond, log_width)
    scales = (0.5, 1.0)
    found = ceiling(exact, target, beta, X, jr.key(1), 2048, scales, 0.5)
    np.testing.assert_allclose(found["ess"], 1.0, atol=1e-9)
    assert np.all(found["offset"] < 0.01)  # the draws' own mean: about n_y / 2048
    np.testing.assert_allclose(found["scaled"][:, 1], 1.0, atol=1e-9)
    assert np.all(found["pareto_k"] == 0.0)  # equal weights: a flat tail

    shift = np.full(target.n_y, 2.0 / np.sqrt(target.n_y)) * target.cond_width  # |m|^2 = 4
    moved = eqx.tree_at(lambda c: c.loc, exact, exact.loc + shift)
    found = ceiling(moved, target, beta, X, jr.key(1), 2048, scales, 0.5)
    assert np.all(found["ess"] < 0.2) and np.all(found["mean"] > 0.9)
    assert np.all(found["matched"] > 0.8)  # p's covariance (about 50 effective draws), shrunk
    np.testing.assert_allclose(found["offset"], 4.0, rtol=0.3)

    wide = eqx.tree_at(lambda c: c.log_diag, cond, log_width + np.log(2.0))
    found = ceiling(wide, target, beta, X, jr.key(1), 2048, scales, 0.5)
    assert np.all(found["scaled"][:, 0] > 0.999) and np.all(found["scaled"][:, 1] < 0.8)
    assert np.all(found["pareto_k"] < 0.5)  # q wider than p: bounded weights


def test_conditional_networks_alpha2_surrogate_has_the_self_normalised_alpha2_gradient():
    """conditional_network's alpha = 2 loss: its surrogate's gradient is exactly that of
    mean over X of log (1/K) sum_j w_j^2 (w_j = p_beta(Y_j|X) / q(Y_j|X), the K draws
    reparameterised), here for the mixture's q(Y|X) made too narrow; and following it widens q
    (below a width ratio of 1 / sqrt(2), E_q (p / q)^2 would be infinite)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from conditional_network import alpha2_surrogate

    from coarseflow.model.flow import split_trainable
    from coarseflow.objectives import conditional_terms

    target, flow, cond, log_width = mixture_flow_and_conditional()
    narrow = eqx.tree_at(lambda c: c.log_diag, cond, log_width + np.log(0.8))
    params, static = split_trainable(narrow)
    beta, K, key = jnp.asarray(1.0), 64, jr.key(4)
    X = jnp.repeat(flow.sample(jr.key(3), (16,)), K, axis=0)

    def surrogate(p):
        terms = conditional_terms(eqx.combine(p, static), key, target, X, beta, 1e6)
        return alpha2_surrogate(terms, K)

    def direct(p):
        model = eqx.combine(p, static)
        draws = model.sample_batch(key, target, X, beta)
        u = jax.vmap(target.energy_xy)(X, draws.Y)
        log_w = (-beta * u - draws.log_q).reshape(-1, K)
        return jnp.mean(jax.nn.logsumexp(2 * log_w, axis=1) - np.log(K))

    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
    expected = flat(jax.grad(direct)(params))
    np.testing.assert_allclose(flat(jax.grad(surrogate)(params)), expected, rtol=1e-8, atol=1e-10)
    assert np.all(jax.grad(direct)(params).log_diag < 0)  # descent widens the narrow q


@pytest.mark.parametrize(
    ("width", "loss", "below", "warmup"),
    [(2.0, "rkl", 0.9, 0), (0.6, "iwx16", 0.7, 100)],
    ids=["wide-reverse-kl", "narrow-importance-weighted-warmed-up"],
)
def test_conditional_network_fine_tune_brings_a_misfit_conditional_back_on_pool_x(
    width, loss, below, warmup
):
    """conditional_network's fine_tune: the mixture's q(Y|X) with its exact mean but twice too
    wide (by the reverse KL) or 0.6 times too narrow (by the importance-weighted bound, 16
    draws at each X, its rate warmed up over the first 100 updates), trained on X from a fixed
    pool of q(X), returns toward the exact width (conditional ESS at those X from below
    ``below`` to above 0.97); q(X) is not touched."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from conditional_capacity import conditional_ess
    from conditional_network import fine_tune

    target, flow, cond, log_width = mixture_flow_and_conditional()
    misfit = eqx.tree_at(lambda c: c.log_diag, cond, log_width + np.log(width))
    beta = jnp.asarray(1.0)
    pool = flow.sample(jr.key(3), (512,))

    def draw_X(key):
        return pool[jr.randint(key, (64,), 0, pool.shape[0])]

    assert np.mean(conditional_ess(misfit, flow, target, jr.key(2), beta, 64, 16)) < below
    tuned = fine_tune(misfit, target, beta, draw_X, 300, 3e-2, 0, loss, warmup)
    assert np.mean(conditional_ess(tuned, flow, target, jr.key(2), beta, 64, 16)) > 0.97


def test_refit_run_refuses_other_settings_and_an_existing_folder(tmp_path):
    """(Its refit of a finished run, equal to a run trained with the refit from the start, is
    tested with the run: tests/test_conditional.py.)"""
    from refit_run import refit_copy

    with pytest.raises(SystemExit, match="only refit_"):
        refit_copy(tmp_path / "run", tmp_path / "out", {"learning_rate": 0.1})
    with pytest.raises(SystemExit, match="exists"):
        refit_copy(tmp_path / "run", tmp_path, {"refit_updates": 12})
