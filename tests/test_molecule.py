"""The Molecule target: energy, gauge (held coordinates), grafting, selections, I/O, outputs."""

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("openmm")
mdtraj = pytest.importorskip("mdtraj")

from coarseflow.analysis import observables as obs  # noqa: E402
from coarseflow.analysis.molecule_report import MoleculeReport  # noqa: E402
from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.forcefield import build_system  # noqa: E402
from coarseflow.targets.backbone import phi_psi_indices  # noqa: E402
from coarseflow.targets.molecule import Molecule  # noqa: E402
from coarseflow.units import MOLAR_GAS_CONSTANT  # noqa: E402

GS = "tests/data/ace_gly_ser_nme.pdb"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ala2():
    return Molecule()


BATCH = 8  # every batched call uses this size, so each function compiles once


@eqx.filter_jit
def _value_and_grad(target, x):
    return jax.vmap(jax.value_and_grad(target.energy))(x)


@pytest.fixture(scope="module")
def energies(ala2):
    """x (k <= BATCH, n) -> (u (k,), du/dx (k, n)), compiled once with the Molecule an argument."""

    def f(x):
        x = jnp.asarray(x)
        k = x.shape[0]
        padded = jnp.concatenate([x, jnp.broadcast_to(x[:1], (BATCH - k, x.shape[1]))])
        u, g = _value_and_grad(ala2, padded)
        return np.asarray(u[:k]), np.asarray(g[:k])

    return f


def _rotation(seed):
    q = np.random.default_rng(seed).normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _openmm(path, positions):
    """(energies (k,) kJ/mol, forces (k, n_atoms, 3) kJ/mol/nm) from OpenMM's Reference platform."""
    import openmm
    from openmm import unit

    _, _, system = build_system(path)
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for p in np.asarray(positions, dtype=np.float64).reshape(-1, system.getNumParticles(), 3):
        context.setPositions(p * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        )
    return np.asarray(energies), np.asarray(forces)


def test_layout_and_held_coordinates(ala2):
    from openmm import unit

    assert MOLAR_GAS_CONSTANT == pytest.approx(
        unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin), rel=1e-15
    )
    assert ala2.kT == pytest.approx(MOLAR_GAS_CONSTANT * 300.0)
    # CG = C(ACE), N, CA, C(ALA), N(NME); gauge atoms N, CA, C of ALA
    assert ala2.cg_atoms == (4, 6, 8, 10, 16)
    assert ala2.fixed_atoms == (6, 8, 10)
    assert ala2.n == 3 * 22 - 6 and ala2.partition.n_x == 9 and ala2.partition.n_y == 51
    a, b, c = ala2.fixed_atoms
    held = (3 * a, 3 * a + 1, 3 * a + 2, 3 * b, 3 * b + 1, 3 * c + 1)
    assert ala2.held_coordinates == held
    assert sorted(set(range(66)) - set(ala2.free_indices)) == sorted(held)
    pos = np.asarray(ala2.full_positions(ala2.reference_x))
    assert pos.shape == (22, 3)
    np.testing.assert_array_equal(pos.reshape(-1)[list(held)], 0.0)
    assert pos[b, 2] > 0.1 and pos[c, 0] > 0.1  # b on +z, c at x > 0 in the xz-plane
    # X = the free coordinates of the CG atoms, in atom order
    X, Y = ala2.partition.split(ala2.reference_x)
    cg_free = [f for f in ala2.free_indices if f // 3 in ala2.cg_atoms]
    np.testing.assert_array_equal(np.asarray(X), pos.reshape(-1)[cg_free])
    np.testing.assert_array_equal(np.asarray(Y), pos[list(ala2.fast_atoms)].reshape(-1))
    masses = np.asarray(ala2.y_mass())
    assert masses.shape == (51,)
    assert masses[0] == pytest.approx(12.01, abs=0.01)  # CH3 of ACE
    assert masses[3] == pytest.approx(1.008, abs=0.001)  # H1 of ACE
    lo, hi = ala2.cartesian_x_bounds()  # x_bounds is in internal coordinates (test_internal)
    # 0.4 nm either side, 0.05 nm for the three free coordinates of the gauge atoms b and c
    gauge = np.isin(np.asarray(cg_free) // 3, [b, c])
    assert gauge.sum() == 3
    np.testing.assert_allclose((hi - lo)[~gauge], 0.8)
    np.testing.assert_allclose((hi - lo)[gauge], 0.1)
    assert np.all((lo < X) & (X < hi))


def test_energy_at_reference_matches_openmm(ala2, energies):
    path = str(ala2.pdb_path)
    _, positions, _ = build_system(path)
    want, _ = _openmm(path, positions)
    u, _ = energies(ala2.reference_x[None])
    assert u[0] == pytest.approx(want[0] / ala2.kT, rel=1e-8)


def test_gauge_round_trip_rigid_invariance_and_forces(ala2, energies):
    rng = np.random.default_rng(0)
    x = np.asarray(ala2.reference_x) + rng.normal(scale=0.01, size=(BATCH, ala2.n))
    np.testing.assert_allclose(
        np.asarray(ala2.free_coordinates(ala2.full_positions(x))), x, atol=1e-12
    )
    # any rotated + translated structure: the energy (OpenMM's) of its gauge representative
    pos = np.asarray(ala2.full_positions(x))
    moved = np.stack([p @ _rotation(i).T + rng.normal(size=3) for i, p in enumerate(pos)])
    x_moved = ala2.free_coordinates(jnp.asarray(moved))
    np.testing.assert_allclose(np.asarray(x_moved), x, atol=1e-12)
    u, g = energies(x_moved)
    e_openmm, f_openmm = _openmm(ala2.pdb_path, moved)
    np.testing.assert_allclose(u, e_openmm / ala2.kT, rtol=1e-8)
    # du/dx = -(force in the gauge frame) / kT at the free coordinates
    _, f_gauge = _openmm(ala2.pdb_path, pos)
    want = -f_gauge.reshape(BATCH, -1)[:, list(ala2.free_indices)] / ala2.kT
    np.testing.assert_allclose(g, want, atol=1e-3 / ala2.kT)
    # energy_xy agrees with energy
    X, Y = ala2.partition.split(x_moved[2])
    assert float(ala2.energy_xy(X, Y)) == pytest.approx(float(u[2]), rel=1e-12)


def _rotate_about_bond(positions, topology, j, k, angle):
    """Rotate the atoms on k's side of bond j-k about the j -> k axis by ``angle``."""
    neighbours = {i: set() for i in range(topology.n_atoms)}
    for a, b in topology.bonds:
        neighbours[a.index].add(b.index)
        neighbours[b.index].add(a.index)
    side, stack = {k}, [k]
    while stack:
        for v in neighbours[stack.pop()]:
            if v not in side and v != j:
                side.add(v)
                stack.append(v)
    idx = sorted(side)
    axis = positions[k] - positions[j]
    axis = axis / np.linalg.norm(axis)
    v = positions[idx] - positions[k]
    c, s = np.cos(angle), np.sin(angle)
    v = v * c + np.cross(axis, v) * s + np.outer(v @ axis, axis) * (1 - c)
    out = positions.copy()
    out[idx] = v + positions[k]
    return out


def _set_phi_psi(molecule, phi_deg, psi_deg):
    pos = np.asarray(molecule.info.reference_positions, dtype=np.float64)
    for quad, target in (
        (molecule.info.phi_quads[0], phi_deg),
        (molecule.info.psi_quads[0], psi_deg),
    ):
        delta = np.radians(target) - obs.dihedral(pos, quad)
        pos = _rotate_about_bond(pos, molecule.topology, int(quad[1]), int(quad[2]), delta)
    return pos


def test_y_init_grafts_fast_atoms_onto_any_backbone(ala2, energies):
    centres = [
        (-150, 160),
        (-80, 75),
        (-70, 145),
        (-75, -40),
        (60, 40),
        (75, -65),
        (-90, 0),
        (170, 170),
    ]
    pos = np.stack([_set_phi_psi(ala2, *c) for c in centres])
    phi, psi = obs.phi_psi(pos, ala2.topology)
    np.testing.assert_allclose(np.degrees(phi[:, 0]), [c[0] for c in centres], atol=1e-8)
    np.testing.assert_allclose(np.degrees(psi[:, 0]), [c[1] for c in centres], atol=1e-8)
    x = ala2.free_coordinates(jnp.asarray(pos))
    X, _ = ala2.partition.split(x)
    graft = jax.jit(jax.vmap(ala2.y_init))
    Y = graft(X)
    u, _ = energies(ala2.partition.merge(X, Y))
    u_ref = energies(ala2.reference_x[None])[0][0]
    assert np.all(np.abs(u - u_ref) < 100.0), u - u_ref
    # rigid rotations about backbone bonds: the graft restores the fast atoms exactly
    np.testing.assert_allclose(u, energies(x)[0], rtol=1e-9)
    # a distorted backbone (random CG displacements): still finite and moderate
    rng = np.random.default_rng(3)
    Xd = X + rng.normal(scale=0.01, size=X.shape)
    ud, _ = energies(ala2.partition.merge(Xd, graft(Xd)))
    assert np.all(np.isfinite(ud)) and np.all(ud - u_ref < 300.0), ud - u_ref


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("name XX", "cg_selection 'name XX' selects no atoms"),
        ("all", "cg_selection 'all' selects all 22 atoms"),
        ("name C and (", "cg_selection 'name C and \\(': not a valid mdtraj selection"),
        ("resname ALA and name CA", "selects 1 atom"),
    ],
)
def test_selection_errors(selection, message):
    with pytest.raises(ConfigError, match=message) as info:
        Molecule(cg_selection=selection)
    assert "\n" not in str(info.value)


def test_fixed_atom_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="fixed_atoms: expected 3 atom"):
        Molecule(fixed_atoms=[6, 8])
    with pytest.raises(ConfigError, match="distinct"):
        Molecule(fixed_atoms=[6, 8, 8])
    with pytest.raises(ConfigError, match=r"atoms \[11\] are not coarse-grained"):
        Molecule(fixed_atoms=[6, 8, 11])
    m = Molecule(fixed_atoms=[4, 6, 8])
    assert m.fixed_atoms == (4, 6, 8) and m.n == 60
    with pytest.raises(ConfigError, match="no_such.pdb"):
        Molecule(pdb=str(tmp_path / "no_such.pdb"))
    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a PDB file\n")
    with pytest.raises(ConfigError, match="bad.pdb"):
        Molecule(pdb=str(bad))
    unknown = tmp_path / "unknown.pdb"
    unknown.write_text(Path(m.pdb_path).read_text().replace("ALA", "XYZ"))
    with pytest.raises(ConfigError, match="no template for residue 'XYZ'"):
        Molecule(pdb=str(unknown), cg_selection="name N CA C")
    with pytest.raises(ConfigError, match="temperature"):
        Molecule(temperature=-3.0)


def test_write_trajectory_round_trips(ala2, tmp_path):
    rng = np.random.default_rng(1)
    x = np.asarray(ala2.reference_x) + rng.normal(scale=0.02, size=(5, ala2.n))
    pos = np.asarray(ala2.full_positions(x))
    written = ala2.write_trajectory(tmp_path / "s.pdb", x)
    assert written == [tmp_path / "s.pdb"]
    traj = mdtraj.load(str(tmp_path / "s.pdb"))
    assert traj.n_frames == 5 and traj.n_atoms == 22
    assert [a.name for a in traj.topology.atoms] == [a.name for a in ala2.topology.atoms]
    np.testing.assert_allclose(traj.xyz, pos, atol=1e-3)
    written = ala2.write_trajectory(tmp_path / "out" / "s.dcd", x)
    assert written == [tmp_path / "out" / "s.dcd", tmp_path / "out" / "s.pdb"]
    traj = mdtraj.load(str(written[0]), top=str(written[1]))
    assert traj.n_frames == 5
    np.testing.assert_allclose(traj.xyz, pos, atol=1e-5)


def test_molecules_from_equal_inputs_are_equal_static_data(ala2):
    """The static record compares by value: a rebuilt Molecule reuses every compiled function."""
    other = Molecule()
    assert other.info == ala2.info and hash(other.info) == hash(ala2.info)
    assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(ala2)
    traces = []

    @eqx.filter_jit
    def energy(target, x):
        traces.append(1)  # runs once per compilation
        return target.energy(x)

    assert float(energy(ala2, ala2.reference_x)) == float(energy(other, other.reference_x))
    assert len(traces) == 1
    moved = Molecule(fixed_atoms=[4, 6, 8])  # another gauge frame: other static data
    assert jax.tree_util.tree_structure(moved) != jax.tree_util.tree_structure(ala2)


def test_second_molecule_with_backbone_selection():
    m = Molecule(pdb=GS, cg_selection="backbone")
    assert m.n_atoms == 30 and len(m.cg_atoms) == 12 and m.partition.n_x == 30
    assert m.residue_labels == ["GLY2", "SER3"]
    path = str(Path(GS).resolve())
    _, positions, _ = build_system(path)
    want, _ = _openmm(path, positions)
    assert float(eqx.filter_jit(m.energy)(m.reference_x)) == pytest.approx(want[0] / m.kT, rel=1e-8)
    X, Y = m.partition.split(m.reference_x)
    np.testing.assert_allclose(np.asarray(m.y_init(X)), np.asarray(Y), atol=1e-10)
    o = MoleculeReport(m).observables(np.asarray(m.reference_x)[None])
    traj = mdtraj.load(GS)
    np.testing.assert_allclose(o["phi"], mdtraj.compute_phi(traj)[1], atol=1e-5)
    np.testing.assert_allclose(o["psi"], mdtraj.compute_psi(traj)[1], atol=1e-5)
    assert o["rmsd_to_reference"][0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(o["rg"], mdtraj.compute_rg(traj), rtol=1e-5)
    # the default selection of a user's peptide: the atoms of every backbone phi / psi
    wanted = {int(i) for quads in phi_psi_indices(traj.topology) for i in quads.ravel()}
    assert Molecule(pdb=GS).cg_atoms == tuple(sorted(wanted))


class _Samples:
    def __init__(self, x, log_weights):
        self.x, self.log_weights = x, log_weights


def test_observables_metrics_and_figures(ala2, tmp_path):
    centres = [(-75, -40), (-75, -40), (-150, 160), (60, 40)]
    pos = np.stack([_set_phi_psi(ala2, *c) for c in centres])
    x = np.asarray(ala2.free_coordinates(jnp.asarray(pos)))
    w = np.array([0.1, 0.1, 0.2, 0.6])
    ref_path = tmp_path / "ref.npz"
    phi_ref = np.radians([-75.0, -75.0, -75.0, 60.0])
    psi_ref = np.radians([-40.0, -40.0, -40.0, 40.0])
    err = np.arange(6) / 100.0
    np.savez(
        ref_path,
        phi=phi_ref,
        psi=psi_ref,
        rg=np.full(4, 0.3),
        basins=np.array([*obs.BASINS, "other"]),
        populations_err=err,
    )
    m = Molecule(reference=str(ref_path))
    report = MoleculeReport(m)
    o = report.observables(x)
    assert o["phi"].shape == (4, 1) and o["rg"].shape == (4,)
    np.testing.assert_allclose(np.degrees(o["psi"][:, 0]), [c[1] for c in centres], atol=1e-8)

    samples = _Samples(x, np.log(w))
    out = report.metrics(samples, w, 1.0)
    assert out["basin_alpha_R_raw"] == pytest.approx(0.5)
    assert out["basin_alpha_R_reweighted"] == pytest.approx(0.2)
    assert out["basin_alpha_L_reweighted"] == pytest.approx(0.6)
    # sum_i w_i^2 (1[alpha_L] - 0.6)^2 = 3 x w^2 0.36 + 0.6^2 0.16
    assert out["basin_alpha_L_reweighted_err"] == pytest.approx(math.sqrt(0.0792))
    assert out["basin_alpha_R_reference"] == pytest.approx(0.75)
    assert out["basin_C7eq_PII_raw"] == 0.0
    assert out["basin_C7eq_PII_reference_err"] == pytest.approx(0.01)
    assert out["rg_mean_reference"] == pytest.approx(0.3)
    assert out["rg_mean_reweighted"] == pytest.approx(float(np.sum(w * o["rg"])))
    assert 0 < out["ramachandran_js_raw"] < np.log(2) and out["ramachandran_kl_raw"] > 0
    assert out["ramachandran_kl_reweighted"] != out["ramachandran_kl_raw"]
    low = report.metrics(samples, w, 0.5)  # the reference is only for beta = 1
    assert "basin_alpha_R_reference" not in low and "ramachandran_kl_raw" not in low

    figs = report.figures(tmp_path / "figs", {0.5: samples, 1.0: samples})
    names = sorted(p.name for p in figs)
    assert names == [
        "ramachandran_beta_0.5.png",
        "ramachandran_beta_1.png",
        "ramachandran_reweighted.png",
        "rg.png",
        "rmsd.png",
    ]
    assert all(p.stat().st_size > 1000 for p in figs)

    bad = tmp_path / "bad.npz"
    np.savez(bad, phi=phi_ref)
    with pytest.raises(ConfigError, match="missing arrays \\['psi'\\]"):
        Molecule(reference=str(bad))


def test_config_file_parses():
    from coarseflow.config import build_target, load_config

    config = load_config(ROOT / "configs" / "alanine_dipeptide.toml")
    assert config.target["kind"] == "molecule"
    assert config.prediction.conditional == "ais" and config.prediction.ais_steps == 100
    target = build_target(config.target)
    assert isinstance(target, Molecule) and target.cg_atoms == (4, 6, 8, 10, 16)


def test_field_config_builds_the_openmmtools_alanine_dipeptide():
    """configs/alanine_dipeptide_field.toml: openmmtools' AlanineDipeptideImplicit (Amber ff96
    prmtop, OBC1, constraints=None) in one key; the energy is OpenMM's of the same System."""
    import openmm
    from openmm import app, unit

    from coarseflow.config import build_target, load_config

    config = load_config(ROOT / "configs" / "alanine_dipeptide_field.toml")
    assert config.target["pdb"] == "alanine_dipeptide_implicit"
    assert "forcefield" not in config.target
    assert config.target["reference"] == "alanine_dipeptide_implicit"  # built in
    target = build_target(config.target)
    reference = target.info.reference
    assert reference["phi"].shape == (192_000, 1) and reference["psi"].shape == (192_000, 1)
    assert reference["populations_err"].shape == (6,)
    assert isinstance(target, Molecule) and target.n_atoms == 22 and target.temperature == 300.0
    # C of ACE, N, CA, C of ALA, N of NME: the prmtop lists CB before ALA's C
    assert target.cg_atoms == (4, 6, 8, 14, 16) and target.n == 60
    assert target.pdb_path.endswith("alanine_dipeptide_implicit.prmtop")
    assert target.forcefield.term_names[-1] == "gbsa"
    assert target.forcefield.terms[-1].alpha == 0.8  # OBC1

    prmtop = app.AmberPrmtopFile(target.pdb_path)
    system = prmtop.createSystem(implicitSolvent=app.OBC1, constraints=None)
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    positions = np.asarray(target.full_positions(target.reference_x))  # the gauge frame
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(-138.9697, abs=1e-3)  # the shipped inpcrd, moved rigidly
    u, du = jax.value_and_grad(target.energy)(target.reference_x)
    assert float(u) * target.kT == pytest.approx(energy, rel=1e-6)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    expected = -forces.reshape(-1)[np.asarray(target.free_indices)] / target.kT
    np.testing.assert_allclose(np.asarray(du), expected, atol=1e-6 * np.abs(expected).max())
