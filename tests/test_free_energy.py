"""Free-energy profiles, surfaces and state populations from weighted samples."""

import numpy as np
import pytest

from coarseflow.analysis import free_energy as fe


def test_profile_of_a_gaussian_is_its_parabola_within_the_band():
    rng = np.random.default_rng(0)
    s = rng.normal(size=20_000)
    prof = fe.profile_1d(s, None, np.linspace(-2, 2, 21), kT=2.5)
    exact = 2.5 * prof.centers**2 / 2
    exact -= exact.min()
    assert np.nanmin(prof.F) == 0.0
    assert np.all(prof.lo <= prof.F + 1e-12) and np.all(prof.F <= prof.hi + 1e-12)
    # the bins' F is -kT log of the bin average of p: within 0.1 kT of the parabola here
    np.testing.assert_allclose(prof.F, exact, atol=0.25)


def test_reweighting_turns_uniform_samples_into_the_target_profile():
    # samples uniform on [-3, 3], weights N(0, 1) / uniform: the reweighted profile is x^2 / 2
    rng = np.random.default_rng(1)
    s = rng.uniform(-3, 3, 50_000)
    prof = fe.profile_1d(s, np.exp(-(s**2) / 2), np.linspace(-2, 2, 11))
    exact = prof.centers**2 / 2
    np.testing.assert_allclose(prof.F - prof.F[5], exact - exact[5], atol=0.1)


def test_empty_bins_are_nan_and_unweighted_reference_has_no_band():
    prof = fe.profile_1d(np.array([0.1, 0.2, 0.3]), None, np.array([0.0, 0.5, 1.0]), n_boot=0)
    assert prof.F[0] == 0.0 and np.isnan(prof.F[1])
    np.testing.assert_array_equal(prof.lo, prof.F)


def test_surface_minimum_is_zero_and_empty_bins_nan():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(5000, 2)) * [0.5, 1.0]
    edges = (np.linspace(-4, 4, 17), np.linspace(-4, 4, 17))
    F = fe.surface_2d(v, None, edges, kT=1.0)
    assert F.shape == (16, 16) and np.nanmin(F) == 0.0
    assert np.isnan(F[0, 0])  # (-4, -4): 8 sigma out in x, nothing there
    assert np.nanargmin(F) in {7 * 16 + 7, 7 * 16 + 8, 8 * 16 + 7, 8 * 16 + 8}


def test_populations_and_free_energy_differences():
    # 3 states with masses 0.6 / 0.3 / 0.1 (by weight): dF = -kT log(p / 0.6)
    labels = np.repeat([0, 1, 2], [1000, 1000, 1000])
    weights = np.repeat([0.6, 0.3, 0.1], 1000)
    pops = fe.populations(labels, 3, weights, kT=2.0)
    np.testing.assert_allclose(pops.p, [0.6, 0.3, 0.1], rtol=1e-12)
    np.testing.assert_allclose(pops.dF, -2.0 * np.log([1.0, 0.5, 1 / 6]), rtol=1e-12)
    assert np.all(pops.p_lo <= pops.p) and np.all(pops.p <= pops.p_hi)
    assert pops.dF_lo[1] < pops.dF[1] < pops.dF_hi[1]
    # a state no sample is in: population 0, dF unknown (NaN), not infinite
    empty = fe.populations(np.zeros(50, dtype=int), 2, None)
    assert empty.p[1] == 0.0 and np.isnan(empty.dF[1])


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="weights"):
        fe.profile_1d(np.zeros(3), np.array([1.0, -1.0, 1.0]), np.linspace(-1, 1, 3))
