"""The JAX force field against OpenMM (Reference platform, float64), term by term.

Every term's energy and forces are compared with OpenMM's on 50 perturbed configurations of
the bundled alanine dipeptide, of a second molecule (ACE-GLY-SER-NME, read with index
gathers and non-default GBSA settings) and of the built-in openmmtools alanine dipeptide (an
Amber prmtop in OBC1, a CustomGBForce); gradients are checked against finite differences,
energies for invariance under rigid motion; errors name what they reject.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.forcefield import build_system, forcefield_from_system  # noqa: E402

ALANINE = Path(str(importlib.resources.files("coarseflow.data") / "alanine_dipeptide.pdb"))
SECOND = Path(__file__).parent / "data" / "ace_gly_ser_nme.pdb"
FIELD = ALANINE.with_name("alanine_dipeptide_implicit.prmtop")
TERM_OF_FORCE = {
    "HarmonicBondForce": "bonds",
    "HarmonicAngleForce": "angles",
    "PeriodicTorsionForce": "torsions",
    "NonbondedForce": "nonbonded",
    "GBSAOBCForce": "gbsa",
    "CustomGBForce": "gbsa",  # OBC1 (implicitSolvent=app.OBC1)
}
N_CONFIGS = 50  # every batch has this size, so that each molecule compiles once
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


@jax.jit
def evaluate(ff, positions):
    """Per-term (energy (B,), gradient (B, n, 3)) and the total energy (B,) for a batch."""

    def one(x):
        parts = {term.name: jax.value_and_grad(term.energy)(x) for term in ff.terms}
        return parts, ff.energy(x)

    return jax.vmap(one)(positions)


def openmm_reference(system, configs):
    """OpenMM per-term energies {name: (B,)} and forces {name: (B, n, 3)}, and totals."""
    groups = {}
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
        if type(force).__name__ in TERM_OF_FORCE:
            groups[TERM_OF_FORCE[type(force).__name__]] = k
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    energies = {name: [] for name in groups}
    forces = {name: [] for name in groups}
    total_e, total_f = [], []
    for x in configs:
        context.setPositions(x)
        for name, group in groups.items():
            state = context.getState(getEnergy=True, getForces=True, groups={group})
            energies[name].append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            forces[name].append(state.getForces(asNumpy=True).value_in_unit(KJ_NM))
        state = context.getState(getEnergy=True, getForces=True)
        total_e.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        total_f.append(state.getForces(asNumpy=True).value_in_unit(KJ_NM))
    return (
        {k: np.array(v) for k, v in energies.items()},
        {k: np.array(v) for k, v in forces.items()},
        np.array(total_e),
        np.array(total_f),
    )


def perturbed(positions, rng, sigma=0.015):
    return positions[None] + sigma * rng.normal(size=(N_CONFIGS, *positions.shape))


class Molecule:
    def __init__(self, pdb, gather, seed, gbsa_settings=None):
        self.topology, self.positions, self.system = build_system(pdb)
        if gbsa_settings is not None:
            for force in self.system.getForces():
                if isinstance(force, openmm.GBSAOBCForce):
                    force.setSoluteDielectric(gbsa_settings[0])
                    force.setSolventDielectric(gbsa_settings[1])
                    force.setSurfaceAreaEnergy(gbsa_settings[2])
        self.ff = forcefield_from_system(self.system, gather=gather)
        self.configs = perturbed(self.positions, np.random.default_rng(seed))
        self.reference = openmm_reference(self.system, self.configs)
        self.parts, self.total = evaluate(self.ff, jnp.asarray(self.configs))


@pytest.fixture(scope="module")
def alanine():
    return Molecule(ALANINE, gather="auto", seed=0)


@pytest.fixture(scope="module")
def second():
    # Index gathers and non-default GBSA settings, so both paths and all settings are tested.
    return Molecule(SECOND, gather="index", seed=1, gbsa_settings=(2.0, 80.0, 3.1))


@pytest.fixture(scope="module")
def field():
    # openmmtools' AlanineDipeptideImplicit (constraints=None): Amber ff96 prmtop, OBC1.
    return Molecule(FIELD, gather="auto", seed=6)


@pytest.fixture(params=["alanine", "second", "field"])
def molecule(request):
    return request.getfixturevalue(request.param)


def test_bundled_alanine_dipeptide_loads_with_openmm_and_mdtraj():
    mdtraj = pytest.importorskip("mdtraj")
    pdb = app.PDBFile(str(ALANINE))
    residues = [r.name for r in pdb.topology.residues()]
    assert residues == ["ACE", "ALA", "NME"] and pdb.topology.getNumAtoms() == 22
    traj = mdtraj.load(str(ALANINE))
    assert traj.n_atoms == 22
    assert len(mdtraj.compute_phi(traj)[0]) == 1 and len(mdtraj.compute_psi(traj)[0]) == 1
    assert "WITHOUT DOWNLOADS" in ALANINE.read_text()


def test_every_term_matches_openmm(molecule):
    energies, forces, _, _ = molecule.reference
    assert set(molecule.parts) == set(energies) == set(TERM_OF_FORCE.values())
    for name, (energy, gradient) in molecule.parts.items():
        relative = np.abs(np.asarray(energy) - energies[name]) / np.abs(energies[name])
        assert relative.max() <= 1e-6, (name, relative.max())
        force_error = np.abs(-np.asarray(gradient) - forces[name]).max()
        assert force_error <= 1e-3, (name, force_error)


def test_total_energy_and_forces_match_openmm(molecule):
    _, _, total_energy, total_forces = molecule.reference
    total = np.asarray(molecule.total)
    np.testing.assert_allclose(total, total_energy, rtol=1e-6)
    forces = -sum(np.asarray(g) for _, g in molecule.parts.values())
    assert np.abs(forces - total_forces).max() <= 1e-3
    # The perturbations are large enough that the test means something.
    assert np.ptp(total_energy) > 100.0 and np.abs(total_forces).max() > 1e3


def test_gradients_match_finite_differences(alanine):
    """Per term: central differences of the energy on 12 coordinates of one configuration."""
    rng = np.random.default_rng(2)
    x0 = alanine.configs[0]
    coords = [
        (int(a), int(c)) for a, c in zip(rng.choice(22, 12), rng.integers(0, 3, 12), strict=True)
    ]
    h = 1e-5
    batch = np.repeat(x0[None], N_CONFIGS, axis=0)  # N_CONFIGS: reuse the compiled batch
    for k, (atom, c) in enumerate(coords):
        batch[2 * k, atom, c] += h
        batch[2 * k + 1, atom, c] -= h
    parts, _ = evaluate(alanine.ff, jnp.asarray(batch))
    for name, (energy, _) in parts.items():
        gradient = np.asarray(alanine.parts[name][1][0])
        energy = np.asarray(energy)
        fd = np.array([(energy[2 * k] - energy[2 * k + 1]) / (2 * h) for k in range(len(coords))])
        exact = np.array([gradient[a, c] for a, c in coords])
        np.testing.assert_allclose(fd, exact, rtol=1e-5, atol=1e-4, err_msg=name)


def random_rotations(rng, n):
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    ).transpose(2, 0, 1)


def test_energy_invariant_and_forces_covariant_under_rigid_motion(alanine):
    rng = np.random.default_rng(3)
    rot = random_rotations(rng, N_CONFIGS)
    shift = rng.normal(size=(N_CONFIGS, 1, 3)) * 2.0
    moved = np.einsum("bij,bnj->bni", rot, alanine.configs) + shift
    parts, total = evaluate(alanine.ff, jnp.asarray(moved))
    np.testing.assert_allclose(np.asarray(total), np.asarray(alanine.total), rtol=1e-10)
    for name, (_, gradient) in parts.items():
        expected = np.einsum("bij,bnj->bni", rot, np.asarray(alanine.parts[name][1]))
        np.testing.assert_allclose(np.asarray(gradient), expected, atol=1e-7, err_msg=name)


def test_float32_positions_give_a_float32_energy_close_to_float64(alanine):
    x64 = jnp.asarray(alanine.configs[:4])
    f32 = jax.jit(jax.vmap(jax.value_and_grad(alanine.ff.energy)))
    energy, gradient = f32(x64.astype(jnp.float32))
    assert energy.dtype == jnp.float32 and gradient.dtype == jnp.float32
    # The total sums terms of a few thousand kJ/mol: float32 keeps ~1e-7 of that.
    scale = sum(np.abs(np.asarray(e[:4])) for e, _ in alanine.parts.values())
    assert np.all(np.abs(np.asarray(energy) - np.asarray(alanine.total[:4])) <= 1e-5 * scale)
    grad64 = sum(np.asarray(g[:4]) for _, g in alanine.parts.values())
    assert np.abs(np.asarray(gradient) - grad64).max() <= 1e-4 * np.abs(grad64).max()


def test_parameter_gradient_and_second_derivatives_use_plain_autodiff(alanine):
    """The analytic position gradients (torsions, nonbonded, GBSA) must not break derivatives
    in parameters or of second order: both are checked against finite differences."""
    keep = tuple(t for t in alanine.ff.terms if t.name in ("torsions", "nonbonded", "gbsa"))
    ff = eqx.tree_at(lambda f: f.terms, alanine.ff, keep)
    torsions, gbsa = ff.terms[ff.term_names.index("torsions")], ff.terms[-1]
    x = jnp.asarray(alanine.configs[0])
    v = jnp.asarray(np.random.default_rng(4).normal(size=x.shape))
    h = 1e-6

    def energy(ff, x):
        return ff.energy(x)

    def gbsa_with_charge(q):
        return eqx.tree_at(lambda t: t.charge, gbsa, q).energy(x)

    @jax.jit  # one compilation: eager evaluation would compile op by op
    def derivatives(ff, x, v):
        by_params = eqx.filter_grad(energy)(ff, x)  # all float parameters: autodiff fallback
        hvp = jax.jvp(lambda y: jax.grad(energy, argnums=1)(ff, y), (x,), (v,))[1]
        grad_plus = jax.grad(energy, argnums=1)(ff, x + h * v)
        grad_minus = jax.grad(energy, argnums=1)(ff, x - h * v)
        dq = jnp.zeros_like(gbsa.charge).at[3].set(h)
        fd_charge = (gbsa_with_charge(gbsa.charge + dq) - gbsa_with_charge(gbsa.charge - dq)) / (
            2 * h
        )
        return by_params, hvp, (grad_plus - grad_minus) / (2 * h), fd_charge, torsions.energy(x)

    by_params, hvp, fd_hvp, fd_charge, torsion_energy = derivatives(ff, x, v)
    np.testing.assert_allclose(np.asarray(hvp), np.asarray(fd_hvp), rtol=1e-4, atol=1e-2)
    assert abs(float(by_params.terms[-1].charge[3] - fd_charge)) <= 1e-5 * abs(float(fd_charge))
    # The torsion energy is linear in the force constants: sum_t k_t dE/dk_t = E.
    k_grad = by_params.terms[ff.term_names.index("torsions")].k
    assert np.isclose(float(jnp.sum(k_grad * torsions.k)), float(torsion_energy), rtol=1e-10)


def test_torsion_phases_and_periodicities_match_openmm():
    """Amber uses phases 0 and pi only, which hide the dihedral sign; these do not."""
    system = openmm.System()
    for _ in range(5):
        system.addParticle(12.0)
    torsions = openmm.PeriodicTorsionForce()
    for n, phase, k in [(1, 0.7, 2.0), (2, -1.2, 1.5), (3, 2.5, 0.8), (4, 0.3, 1.1), (6, 1.9, 0.4)]:
        torsions.addTorsion(0, 1, 2, 3, n, phase, k)
    torsions.addTorsion(4, 3, 2, 1, 1, -0.4, 3.0)
    system.addForce(torsions)
    rng = np.random.default_rng(5)
    configs = rng.normal(size=(N_CONFIGS, 5, 3)) * 0.15
    _, forces, energy, _ = openmm_reference(system, configs)
    ff = forcefield_from_system(system)
    parts, total = evaluate(ff, jnp.asarray(configs))
    np.testing.assert_allclose(np.asarray(total), energy, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(-np.asarray(parts["torsions"][1]), forces["torsions"], atol=1e-6)


def test_plain_jax_jit_of_the_bound_energy(alanine):
    x = jnp.asarray(alanine.configs[:2])
    energy = jax.jit(alanine.ff.energy)
    np.testing.assert_allclose(
        [float(energy(x[0])), float(energy(x[1]))], np.asarray(alanine.total[:2]), rtol=1e-12
    )


def test_gather_modes():
    _, _, system = build_system(ALANINE)
    matmul = forcefield_from_system(system, gather="matmul")
    index = forcefield_from_system(system, gather="index")
    assert matmul.terms[0].bonds.incidence is not None and index.terms[0].bonds.incidence is None
    with pytest.raises(ConfigError, match="gather: expected"):
        forcefield_from_system(system, gather="scatter")


# ---- what is rejected, and how it is said ----


def test_unsupported_force_is_rejected_by_name():
    _, _, system = build_system(ALANINE)
    system.addForce(openmm.CustomBondForce("r"))
    with pytest.raises(ConfigError, match="unsupported force 'CustomBondForce'"):
        forcefield_from_system(system)


def test_cutoff_methods_are_rejected():
    for method, name in [
        (openmm.NonbondedForce.CutoffNonPeriodic, "CutoffNonPeriodic"),
        (openmm.NonbondedForce.CutoffPeriodic, "CutoffPeriodic"),
        (openmm.NonbondedForce.PME, "PME"),
    ]:
        _, _, system = build_system(ALANINE)
        for force in system.getForces():
            if isinstance(force, openmm.NonbondedForce):
                force.setNonbondedMethod(method)
        message = f"NonbondedForce uses cutoff method {name}; only NoCutoff is supported"
        with pytest.raises(ConfigError, match=message):
            forcefield_from_system(system)
    _, _, system = build_system(ALANINE)
    for force in system.getForces():
        if isinstance(force, openmm.GBSAOBCForce):
            force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffNonPeriodic)
    with pytest.raises(ConfigError, match="GBSAOBCForce uses cutoff method CutoffNonPeriodic"):
        forcefield_from_system(system)


def test_constraints_are_rejected():
    pdb = app.PDBFile(str(ALANINE))
    forcefield = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
    system = forcefield.createSystem(pdb.topology, constraints=app.HBonds)
    n = system.getNumConstraints()
    assert n == 12
    with pytest.raises(ConfigError, match=f"the System has {n} constraints; build it with"):
        forcefield_from_system(system)


def test_missing_and_unreadable_pdb_files_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_system(tmp_path / "nothing.pdb")
    junk = tmp_path / "junk.pdb"
    junk.write_text("this is not a PDB file\n")
    with pytest.raises(ConfigError, match="junk.pdb"):
        build_system(junk)


def test_unknown_residue_and_force_field_file_raise_config_error(tmp_path):
    text = ALANINE.read_text().replace("ALA A", "XYZ A")
    unknown = tmp_path / "unknown.pdb"
    unknown.write_text(text)
    with pytest.raises(ConfigError, match="no template for residue 'XYZ'"):
        build_system(unknown)
    with pytest.raises(ConfigError, match="not_a_forcefield.xml"):
        build_system(ALANINE, forcefield_files=("not_a_forcefield.xml",))


def test_positions_of_the_wrong_shape_are_rejected(alanine):
    with pytest.raises(ValueError, match=r"expected positions of shape \(22, 3\)"):
        alanine.ff.energy(jnp.zeros((21, 3)))


# ---- OBC1 (CustomGBForce) and the built-in openmmtools alanine dipeptide ----


def openmmtools_system():
    """The System of openmmtools.testsystems.AlanineDipeptideImplicit(constraints=None), built
    the way openmmtools builds it (openmmtools itself is not needed)."""
    prmtop = app.AmberPrmtopFile(str(FIELD))
    return prmtop.createSystem(implicitSolvent=app.OBC1, constraints=None, nonbondedCutoff=None)


def test_field_alanine_dipeptide_is_the_openmmtools_system():
    topology, positions, system = build_system(FIELD)
    serialize = openmm.XmlSerializer.serialize
    assert serialize(system) == serialize(openmmtools_system())
    assert topology.getNumAtoms() == 22 and system.getNumConstraints() == 0
    assert [r.name for r in topology.residues()] == ["ACE", "ALA", "NME"]
    names = sorted(type(f).__name__ for f in system.getForces())
    assert "CustomGBForce" in names and "GBSAOBCForce" not in names
    inpcrd = app.AmberInpcrdFile(str(FIELD.with_suffix(".inpcrd")))
    np.testing.assert_array_equal(
        positions, inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    )
    (gbsa,) = (t for t in forcefield_from_system(system).terms if t.name == "gbsa")
    assert (gbsa.alpha, gbsa.beta, gbsa.gamma) == (0.8, 0.0, 2.909125)
    assert not gbsa.engulfed_correction and gbsa.coulomb_constant == 138.935485
    np.testing.assert_allclose(4 * np.pi * gbsa.surface_area_energy, 28.3919551, rtol=1e-15)


def test_field_alanine_dipeptide_energy_and_forces_match_openmm_to_1e6(field):
    """Total and per-term energies and forces, relative to the size of OpenMM's, on the
    reference structure (the shipped inpcrd) and 50 perturbed configurations."""
    energies, forces, total_energy, total_forces = field.reference
    for name, (energy, gradient) in field.parts.items():
        np.testing.assert_allclose(np.asarray(energy), energies[name], rtol=1e-6, err_msg=name)
        error = np.abs(-np.asarray(gradient) - forces[name]).max()
        assert error <= 1e-6 * np.abs(forces[name]).max(), (name, error)
    np.testing.assert_allclose(np.asarray(field.total), total_energy, rtol=1e-6)
    gradient = sum(np.asarray(g) for _, g in field.parts.values())
    assert np.abs(-gradient - total_forces).max() <= 1e-6 * np.abs(total_forces).max()

    # the reference structure itself: -138.970 kJ/mol in OpenMM 8 (GB/SA -50.881)
    batch = np.repeat(field.positions[None], N_CONFIGS, axis=0)
    parts, total = evaluate(field.ff, jnp.asarray(batch))
    e_ref, f_ref, total_ref, forces_ref = openmm_reference(field.system, batch[:1])
    np.testing.assert_allclose(float(total[0]), total_ref[0], rtol=1e-6)
    np.testing.assert_allclose(total_ref[0], -138.9697, atol=1e-3)
    np.testing.assert_allclose(float(parts["gbsa"][0][0]), e_ref["gbsa"][0], rtol=1e-6)
    gradient = sum(np.asarray(g[0]) for _, g in parts.values())
    assert np.abs(-gradient - forces_ref[0]).max() <= 1e-6 * np.abs(forces_ref[0]).max()


def _obc1_system(solvent, solute, surface):
    """8 particles, two of them small spheres that the perturbations move in and out of a
    large one's scaled sphere (the engulfed case, where OBC1's CustomGBForce integral differs
    from GBSAOBCForce's), with an OBC1 force only."""
    from openmm.app.internal.customgbforces import GBSAOBC1Force

    system = openmm.System()
    force = GBSAOBC1Force(solvent, solute, surface, None, 0.0)
    particles = [  # charge e, radius nm, scale
        (0.4, 0.30, 1.5),
        (-0.3, 0.10, 0.5),
        (0.2, 0.11, 0.6),
        (-0.5, 0.17, 0.72),
        (0.1, 0.12, 0.85),
        (0.3, 0.155, 0.79),
        (-0.6, 0.15, 0.85),
        (0.4, 0.18, 0.96),
    ]
    for charge, radius, scale in particles:
        system.addParticle(12.0)
        force.addParticle([charge, radius, scale])
    force.finalize()
    system.addForce(force)
    base = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.14, 0.0, 0.0],
            [0.0, 0.2, 0.0],
            [0.3, 0.25, 0.1],
            [-0.25, -0.2, 0.15],
            [0.1, -0.3, -0.2],
            [-0.35, 0.1, -0.25],
            [0.45, -0.1, 0.3],
        ]
    )
    return system, base


@pytest.mark.parametrize(
    "settings", [(78.5, 1.0, "ACE"), (80.0, 2.0, None)], ids=["ace", "no-surface"]
)
def test_obc1_custom_gb_force_matches_openmm_including_engulfed_spheres(settings):
    system, base = _obc1_system(*settings)
    configs = base[None] + 0.05 * np.random.default_rng(7).normal(size=(N_CONFIGS, 8, 3))
    energies, forces, _, _ = openmm_reference(system, configs)
    ff = forcefield_from_system(system)
    (gbsa,) = ff.terms
    assert (gbsa.solvent_dielectric, gbsa.solute_dielectric) == settings[:2]
    assert (gbsa.surface_area_energy > 0) == (settings[2] == "ACE")
    parts, _ = evaluate(ff, jnp.asarray(configs))
    energy, gradient = (np.asarray(a) for a in parts["gbsa"])
    np.testing.assert_allclose(energy, energies["gbsa"], rtol=1e-6)
    assert np.abs(-gradient - forces["gbsa"]).max() <= 1e-6 * np.abs(forces["gbsa"]).max()
    # The test means something: with GBSAOBCForce's engulfed-sphere term the energies differ.
    obc2_style = dataclasses.replace(gbsa, engulfed_correction=True)  # a static field
    other = np.asarray(jax.vmap(obc2_style.energy)(jnp.asarray(configs)))
    assert np.abs(other - energies["gbsa"]).max() > 1e-2 * np.abs(energies["gbsa"]).max()


def test_other_custom_gb_forces_are_rejected_naming_the_supported_ones():
    from openmm.app.internal.customgbforces import GBSAGBnForce, GBSAOBC1Force

    def system_with(force):
        system, _ = _obc1_system(78.5, 1.0, "ACE")
        system.removeForce(0)
        for charge, radius, scale in [(0.1, 0.15, 0.8)] * 8:
            force.addParticle([charge, radius, scale])
        force.finalize()
        system.addForce(force)
        return system

    # GBn (implicit/gbn.xml) is read since the implicit/*.xml models (test_forcefield_gb.py)
    message = r"unsupported CustomGBForce: only OpenMM's Amber GB models .*; supported: amber"
    salt = GBSAOBC1Force(78.5, 1.0, "ACE", None, 1.0)  # kappa > 0: salt screening
    for force in (GBSAGBnForce(78.5, 1.0, "ACE", None, 1.0), salt):
        with pytest.raises(ConfigError, match=message):
            forcefield_from_system(system_with(force))
    changed = GBSAOBC1Force(78.5, 1.0, "ACE", None, 0.0)
    expression, kind = changed.getEnergyTermParameters(1)
    changed.setEnergyTermParameters(1, expression.replace("0.14", "0.15"), kind)
    with pytest.raises(ConfigError, match=message):
        forcefield_from_system(system_with(changed))

    cutoff = openmmtools_system()
    for force in cutoff.getForces():
        if isinstance(force, openmm.CustomGBForce):
            force.setNonbondedMethod(openmm.CustomGBForce.CutoffNonPeriodic)
    with pytest.raises(ConfigError, match="CustomGBForce uses cutoff method CutoffNonPeriodic"):
        forcefield_from_system(cutoff)
    both = openmmtools_system()
    obc2 = openmm.GBSAOBCForce()
    for _ in range(22):
        obc2.addParticle(0.0, 0.15, 0.8)
    both.addForce(obc2)
    with pytest.raises(ConfigError, match="both a GBSAOBCForce and a CustomGBForce"):
        forcefield_from_system(both)


def test_amber_prmtop_solvent_choices_and_errors(tmp_path):
    for solvent, gb in [("OBC2", "GBSAOBCForce"), ("vacuum", None), ("OBC1", "CustomGBForce")]:
        _, _, system = build_system(FIELD, [solvent])
        names = {type(f).__name__ for f in system.getForces()}
        assert names & {"GBSAOBCForce", "CustomGBForce"} == ({gb} if gb else set())
    with pytest.raises(ConfigError, match="is an Amber prmtop, which carries its own param"):
        build_system(FIELD, ["amber99sbildn.xml", "amber99_obc.xml"])
    lonely = tmp_path / "lonely.prmtop"
    lonely.write_bytes(FIELD.read_bytes())
    with pytest.raises(ConfigError, match="no coordinates for Amber prmtop .*'lonely.inpcrd'"):
        build_system(lonely)
    with pytest.raises(ConfigError, match="Amber prmtop file .* does not exist"):
        build_system(tmp_path / "nothing.prmtop")
