"""Observables agree with mdtraj; Ramachandran basins partition the plane."""

import math
from importlib.resources import files

import jax
import jax.numpy as jnp
import numpy as np
import pytest

mdtraj = pytest.importorskip("mdtraj")

from coarseflow.analysis import observables as obs  # noqa: E402

ALA2 = str(files("coarseflow").joinpath("data", "alanine_dipeptide.pdb"))
GS = "tests/data/ace_gly_ser_nme.pdb"


def _noisy(path, n_frames=16, scale=0.03, seed=0):
    """A trajectory of n_frames randomly perturbed copies of the PDB structure."""
    traj = mdtraj.load(path)
    rng = np.random.default_rng(seed)
    xyz = traj.xyz[0][None] + rng.normal(scale=scale, size=(n_frames, traj.n_atoms, 3))
    return mdtraj.Trajectory(xyz.astype(np.float32), traj.topology)


@pytest.mark.parametrize("path", [ALA2, GS])
def test_dihedral_and_phi_psi_agree_with_mdtraj(path):
    traj = _noisy(path, scale=0.05)
    xyz = traj.xyz.astype(np.float64)
    rng = np.random.default_rng(1)
    quads = np.stack([rng.choice(traj.n_atoms, 4, replace=False) for _ in range(12)])
    want = mdtraj.compute_dihedrals(traj, quads, periodic=False)
    got = obs.dihedral(xyz, quads)
    assert got.shape == (16, 12) and isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # one quad -> shape (frames,); JAX in -> JAX out, same values, jit-able
    got_jax = jax.jit(lambda p: obs.dihedral(p, quads[0]))(jnp.asarray(xyz))
    assert isinstance(got_jax, jax.Array) and got_jax.shape == (16,)
    np.testing.assert_allclose(np.asarray(got_jax), got[:, 0], atol=1e-12)

    phi_q, psi_q = obs.phi_psi_indices(traj.topology)
    mphi_q, mphi = mdtraj.compute_phi(traj, periodic=False)
    mpsi_q, mpsi = mdtraj.compute_psi(traj, periodic=False)
    np.testing.assert_array_equal(phi_q, mphi_q)
    np.testing.assert_array_equal(psi_q, mpsi_q)
    phi, psi = obs.phi_psi(xyz, traj.topology)
    np.testing.assert_allclose(phi, mphi, atol=2e-5)
    np.testing.assert_allclose(psi, mpsi, atol=2e-5)


def test_dihedral_sign_and_range():
    # i on +x, j at the origin, k on +z, l at angle theta about z: IUPAC gives +theta
    for theta in (0.3, 1.7, -2.5, np.pi):
        p = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [np.cos(theta), np.sin(theta), 1]])
        traj = mdtraj.Trajectory(p[None].astype(np.float32), None)
        want = mdtraj.compute_dihedrals(traj, [[0, 1, 2, 3]], periodic=False)[0, 0]
        got = obs.dihedral(p, [0, 1, 2, 3])
        assert got == pytest.approx(want, abs=1e-6)
        assert -np.pi < got <= np.pi
    trans = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [-1.0, -0.0, 1]])
    assert obs.dihedral(trans, [0, 1, 2, 3]) == pytest.approx(np.pi, abs=1e-15)
    with pytest.raises(ValueError, match="quad"):
        obs.dihedral(trans, [0, 1, 2, 9])


def test_radius_of_gyration_agrees_with_mdtraj():
    traj = _noisy(ALA2)
    xyz = traj.xyz.astype(np.float64)
    np.testing.assert_allclose(obs.radius_of_gyration(xyz), mdtraj.compute_rg(traj), rtol=1e-5)
    masses = np.array([a.element.mass for a in traj.topology.atoms])
    com = (masses[:, None] * xyz).sum(1, keepdims=True) / masses.sum()
    want = np.sqrt((masses * ((xyz - com) ** 2).sum(-1)).sum(1) / masses.sum())
    np.testing.assert_allclose(obs.radius_of_gyration(xyz, masses), want, rtol=1e-12)
    got_jax = obs.radius_of_gyration(jnp.asarray(xyz), jnp.asarray(masses))
    np.testing.assert_allclose(np.asarray(got_jax), want, rtol=1e-10)


def test_rmsd_agrees_with_mdtraj_and_ignores_rigid_motion():
    traj = _noisy(ALA2, scale=0.05)
    ref = mdtraj.load(ALA2)
    xyz = traj.xyz.astype(np.float64)
    ref_xyz = ref.xyz[0].astype(np.float64)
    np.testing.assert_allclose(obs.rmsd(xyz, ref_xyz), mdtraj.rmsd(traj, ref, 0), atol=2e-5)
    heavy = ref.topology.select("not element H")
    want = mdtraj.rmsd(traj, ref, 0, atom_indices=heavy)
    np.testing.assert_allclose(obs.rmsd(xyz, ref_xyz, heavy), want, atol=2e-5)
    got_jax = obs.rmsd(jnp.asarray(xyz), jnp.asarray(ref_xyz), heavy)
    np.testing.assert_allclose(np.asarray(got_jax), want, atol=2e-5)
    # a structure with a NaN coordinate (a diverged model's) gets NaN, the others their value
    broken = xyz.copy()
    broken[1, heavy[2], 0] = np.nan
    for xp in (np, jnp):
        got = np.asarray(obs.rmsd(xp.asarray(broken), xp.asarray(ref_xyz), heavy))
        assert np.isnan(got[1])
        np.testing.assert_allclose(np.delete(got, 1), np.delete(want, 1), atol=2e-5)
    # a rotated, translated copy (a proper rotation) has RMSD 0; its mirror image does not
    c, s = np.cos(0.7), np.sin(0.7)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, c, s], [0, -s, c]]
    )
    moved = xyz[0] @ rot.T + np.array([1.0, -2.0, 0.5])
    assert obs.rmsd(moved, xyz[0]) == pytest.approx(0.0, abs=1e-7)
    assert obs.rmsd(moved * np.array([1, 1, -1]), xyz[0]) > 0.05


CENTRES = {
    "C5": (-150, 160),
    "C7eq/PII": (-80, 75),
    "alpha_R": (-75, -40),
    "alpha_L": (60, 40),
    "C7ax": (75, -65),
}


def test_basin_labels_of_known_points():
    for name, (phi, psi) in CENTRES.items():
        label = obs.basin_labels(np.radians(phi), np.radians(psi))
        assert obs.BASINS[int(label)] == name
    extra = {
        (-70, 145): "C7eq/PII",
        (170, 170): "C5",
        (-170, -170): "C5",
        (150, -60): "alpha_R",
        (-120.0, 100): "C7eq/PII",
        (-120.01, 100): "C5",
        (60, -10): "alpha_L",
    }
    for (phi, psi), name in extra.items():
        assert obs.BASINS[int(obs.basin_labels(np.radians(phi), np.radians(psi)))] == name
    assert obs.basin_labels(np.radians(60), np.radians(170)) == len(obs.BASINS)  # other
    assert obs.basin_labels(np.nan, 0.0) == len(obs.BASINS)
    # 2 pi periodic
    assert obs.basin_labels(np.radians(60) + 2 * np.pi, np.radians(40) - 2 * np.pi) == 3


def test_basins_partition_the_plane():
    g = np.radians(np.arange(-180.0, 180.0, 0.5) + 0.25)
    phi, psi = np.meshgrid(g, g, indexing="ij")
    deg_phi, deg_psi = np.degrees(phi), np.degrees(psi)
    hits = np.zeros(phi.shape, dtype=int)
    for rects in obs.BASIN_RECTANGLES.values():
        inside = np.zeros(phi.shape, dtype=bool)
        for (a0, a1), (b0, b1) in rects:
            inside |= (deg_phi >= a0) & (deg_phi < a1) & (deg_psi >= b0) & (deg_psi < b1)
        hits += inside
    assert hits.max() == 1  # no point in two basins
    other = obs.basin_labels(phi, psi) == len(obs.BASINS)
    np.testing.assert_array_equal(other, hits == 0)
    # "other" is exactly phi in [0, 120), |psi| >= 150
    want = (deg_phi >= 0) & (deg_phi < 120) & ((deg_psi >= 150) | (deg_psi < -150))
    np.testing.assert_array_equal(other, want)


def test_basin_populations():
    names = list(CENTRES)
    phi = np.radians([CENTRES[n][0] for n in names] + [60.0])
    psi = np.radians([CENTRES[n][1] for n in names] + [170.0])
    pops = obs.basin_populations(phi, psi)
    assert list(pops) == [*obs.BASINS, "other"]
    assert all(v == pytest.approx(1 / 6) for v in pops.values())
    w = np.array([0.5, 0.1, 0.1, 0.1, 0.2, 0.0])
    pops = obs.basin_populations(phi, psi, w)
    assert pops["C5"] == pytest.approx(0.5) and pops["C7ax"] == pytest.approx(0.2)
    assert pops["other"] == 0.0 and sum(pops.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights"):
        obs.basin_populations(phi, psi, -w)
    # equal weights: the binomial error sqrt(p (1 - p) / N) of each basin
    err = obs.basin_population_errors(phi, psi, np.ones(6))
    assert list(err) == list(pops)
    assert all(e == pytest.approx(math.sqrt(1 / 6 * 5 / 6 / 6)) for e in err.values())
    # a basin no weighted sample reaches: the error of half an effective sample, not 0
    n_eff = 1 / np.sum((w / w.sum()) ** 2)
    floor = math.sqrt(0.5 / n_eff * (1 - 0.5 / n_eff) / n_eff)
    assert obs.basin_population_errors(phi, psi, w)["other"] == pytest.approx(floor)
