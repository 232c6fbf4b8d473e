"""CHARMM36 (OpenMM's charmm36.xml): a capped dipeptide built with it, every term of the JAX
force field against OpenMM's energies and forces (Reference platform, float64) to 1e-6; the caps
joined to their neighbours (CHARMM's caps are patches) and the Urey-Bradley terms split off the
bonds with the energy unchanged; charmm36_2024.xml's periodic impropers and a Lennard-Jones
table on toy systems; unsupported custom forces refused by name; a Molecule in charmm36."""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("PeptideBuilder")
mdtraj = pytest.importorskip("mdtraj")
from openmm import app, unit  # noqa: E402

from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.forcefield import build_system, forcefield_from_system  # noqa: E402
from coarseflow.forcefield.charmm import caps_merged  # noqa: E402
from coarseflow.targets.molecule import peptide  # noqa: E402

CHARMM = ("charmm36.xml",)
KJ_NM = unit.kilojoule_per_mole / unit.nanometer
N_CONFIGS = 16


def term_of(force) -> str:
    """The JAX term that reads an OpenMM force of a CHARMM36 System."""
    name = type(force).__name__
    if name == "CustomBondForce":
        return "urey_bradley" if "r0" in force.getEnergyFunction() else "lj14"
    return {
        "HarmonicBondForce": "bonds",
        "HarmonicAngleForce": "angles",
        "PeriodicTorsionForce": "torsions",
        "CMAPTorsionForce": "cmap",
        "NonbondedForce": "nonbonded",
        "CustomTorsionForce": "impropers",
        "CustomNonbondedForce": "lennard_jones",
    }[name]


def openmm_terms(system, configs):
    """{term: (energies (B,), forces (B, n, 3))} and the total energies (B,) by OpenMM."""
    groups = {}
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
        if type(force).__name__ != "CMMotionRemover":
            groups[term_of(force)] = k
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    out = {name: ([], []) for name in groups}
    total = []
    for x in configs:
        context.setPositions(x)
        for name, group in groups.items():
            state = context.getState(getEnergy=True, getForces=True, groups={group})
            out[name][0].append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            out[name][1].append(state.getForces(asNumpy=True).value_in_unit(KJ_NM))
        state = context.getState(getEnergy=True)
        total.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return {k: (np.array(e), np.array(f)) for k, (e, f) in out.items()}, np.array(total)


@jax.jit
def jax_terms(ff, configs):
    def one(x):
        return {t.name: jax.value_and_grad(t.energy)(x) for t in ff.terms}, ff.energy(x)

    return jax.vmap(one)(configs)


@pytest.fixture(scope="module")
def dipeptide(tmp_path_factory):
    """ACE-ALA-NME built in charmm36.xml (PeptideBuilder + OpenMM), its System and 16
    configurations perturbed by 0.015 nm."""
    old = os.environ.get(peptide.CACHE_ENV)
    os.environ[peptide.CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    try:
        path = peptide.cached_peptide(("ACE", "ALA", "NME"), CHARMM)
    finally:
        if old is None:
            del os.environ[peptide.CACHE_ENV]
        else:
            os.environ[peptide.CACHE_ENV] = old
    topology, positions, system = build_system(path, CHARMM)
    configs = positions[None] + 0.015 * np.random.default_rng(0).normal(
        size=(N_CONFIGS, *positions.shape)
    )
    return path, topology, positions, system, configs


def test_every_charmm_term_matches_openmm_to_1e6(dipeptide):
    _, _, _, system, configs = dipeptide
    ff = forcefield_from_system(system)
    assert set(ff.term_names) == {
        "bonds", "angles", "torsions", "cmap", "nonbonded",
        "impropers", "lj14", "urey_bradley", "lennard_jones",
    }  # fmt: skip
    reference, total_ref = openmm_terms(system, configs)
    assert set(reference) == set(ff.term_names)
    parts, total = jax_terms(ff, jnp.asarray(configs))
    for name, (energy, gradient) in parts.items():
        e_ref, f_ref = reference[name]
        relative = np.abs(np.asarray(energy) - e_ref) / np.abs(e_ref)
        assert relative.max() <= 1e-6, (name, relative.max())
        error = np.abs(-np.asarray(gradient) - f_ref).max()
        assert error <= 1e-6 * np.abs(f_ref).max(), (name, error)
        assert np.abs(f_ref).max() > 1.0, name  # every term exerts forces here
    np.testing.assert_allclose(np.asarray(total), total_ref, rtol=1e-6)
    assert np.ptp(total_ref) > 50.0  # the perturbations mean something


def test_caps_are_patches_and_urey_bradley_is_split_off_the_bonds(dipeptide):
    path, topology, positions, system, configs = dipeptide
    # the file keeps the caps as residues (mdtraj's phi / psi), the System is CHARMM's
    assert [r.name for r in topology.residues()] == ["ACE", "ALA", "NME"]
    assert len(mdtraj.compute_phi(mdtraj.load(path))[0]) == 1
    merged, templates = caps_merged(topology)
    assert [r.name for r in merged.residues()] == ["ALA"]
    assert list(templates.values()) == ["ALAD"]  # not charmm36's CGenFF twin AANM
    assert [a.name for a in merged.atoms()] == [a.name for a in topology.atoms()]

    bonds = {frozenset((a.index, b.index)) for a, b in topology.bonds()}
    (harmonic,) = [f for f in system.getForces() if isinstance(f, openmm.HarmonicBondForce)]
    pairs = {frozenset(harmonic.getBondParameters(b)[:2]) for b in range(harmonic.getNumBonds())}
    assert pairs == bonds  # the bond graph a Molecule reads
    (urey,) = [f for f in system.getForces() if f.getName() == "UreyBradley"]
    assert urey.getNumBonds() > 0
    hops = {frozenset(urey.getBondParameters(b)[:2]) for b in range(urey.getNumBonds())}
    assert not hops & bonds

    # the System as OpenMM makes it (Urey-Bradley inside the HarmonicBondForce): same energy
    forcefield = app.ForceField(*CHARMM)
    original = forcefield.createSystem(
        merged, nonbondedMethod=app.NoCutoff, constraints=None, residueTemplates=templates
    )
    assert len([f for f in original.getForces() if isinstance(f, openmm.CustomBondForce)]) == 1
    _, total_split = openmm_terms(system, configs[:4])
    _, total_original = openmm_terms(original, configs[:4])
    np.testing.assert_allclose(total_split, total_original, rtol=1e-12)


def _toy_system(n=7):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(12.0)
    return system


def _toy_configs(seed, n=7, count=N_CONFIGS):
    rng = np.random.default_rng(seed)
    base = np.array([[0.15 * k, 0.1 * (k % 2), 0.0] for k in range(n)])
    return base[None] + 0.12 * rng.normal(size=(count, n, 3))


@pytest.mark.parametrize(
    "expression",
    [
        "k*(theta-theta0)^2",  # charmm36.xml
        "k*min(dtheta, 2*pi - dtheta)^2; dtheta = abs(theta - theta0); pi = 3.141592653589793",
    ],
    ids=["charmm36", "charmm36_2024"],
)
def test_harmonic_impropers_over_the_whole_circle(expression):
    """theta0 near +-pi, where the two expressions differ, and at 0."""
    system = _toy_system()
    force = openmm.CustomTorsionForce(expression)
    force.addPerTorsionParameter("theta0")  # the other order than CHARMM's files
    force.addPerTorsionParameter("k")
    for start, theta0, k in [(0, 0.0, 83.68), (1, math.pi, 502.08), (3, -2.9, 40.0)]:
        force.addTorsion(start, start + 1, start + 2, start + 3, [theta0, k])
    system.addForce(force)
    configs = _toy_configs(1)
    reference, _ = openmm_terms(system, configs)
    e_ref, f_ref = reference["impropers"]
    ff = forcefield_from_system(system)
    (impropers,) = ff.terms
    assert impropers.periodic == ("min" in expression)
    parts, _ = jax_terms(ff, jnp.asarray(configs))
    energy, gradient = parts["impropers"]
    np.testing.assert_allclose(np.asarray(energy), e_ref, rtol=1e-9)
    assert np.abs(-np.asarray(gradient) - f_ref).max() <= 1e-6 * np.abs(f_ref).max()


def test_lennard_jones_table_with_nbfix_and_exclusions():
    """A LennardJonesForce's CustomNonbondedForce: three types, an NBFIX pair that is no
    combination rule, exclusions; the long-range correction asked for (charmm36_2024.xml) does
    nothing without a cutoff."""
    n = 7
    sigma, epsilon = np.array([0.30, 0.35, 0.25]), np.array([0.4, 0.2, 0.8])
    s = 0.5 * (sigma[:, None] + sigma[None, :])
    e = np.sqrt(epsilon[:, None] * epsilon[None, :])
    e[0, 2] = e[2, 0] = 2.5  # NBFIX
    acoef, bcoef = 4 * e * s**12, 4 * e * s**6
    force = openmm.CustomNonbondedForce("acoef(type1, type2)/r^12 - bcoef(type1, type2)/r^6;")
    force.addPerParticleParameter("type")
    force.addTabulatedFunction("acoef", openmm.Discrete2DFunction(3, 3, acoef.T.ravel().tolist()))
    force.addTabulatedFunction("bcoef", openmm.Discrete2DFunction(3, 3, bcoef.T.ravel().tolist()))
    types = [0, 1, 2, 2, 1, 0, 2]
    for t in types:
        force.addParticle([float(t)])
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 2)]:
        force.addExclusion(i, j)
    force.setUseLongRangeCorrection(True)
    system = _toy_system(n)
    system.addForce(force)
    configs = _toy_configs(2, n) * 2.0  # pairs far enough apart for finite energies
    reference, _ = openmm_terms(system, configs)
    e_ref, f_ref = reference["lennard_jones"]
    parts, _ = jax_terms(forcefield_from_system(system), jnp.asarray(configs))
    energy, gradient = parts["lennard_jones"]
    np.testing.assert_allclose(np.asarray(energy), e_ref, rtol=1e-9)
    assert np.abs(-np.asarray(gradient) - f_ref).max() <= 1e-6 * np.abs(f_ref).max()
    assert np.ptp(e_ref) > 1.0


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: openmm.CustomBondForce("r"),
            "unsupported force 'CustomBondForce' with energy 'r'",
        ),
        (
            lambda: openmm.CustomTorsionForce("k*(theta-theta0)^4"),
            re.escape("unsupported force 'CustomTorsionForce' with energy 'k*(theta-theta0)^4'"),
        ),
        (
            lambda: _with_global(openmm.CustomTorsionForce("k*(theta-theta0)^2")),
            r"CustomTorsionForce has global parameters \['scale'\]",
        ),
        (
            lambda: _with_cutoff(openmm.CustomNonbondedForce("acoef(type1,type2)/r^12")),
            "CustomNonbondedForce uses cutoff method CutoffNonPeriodic",
        ),
    ],
    ids=["bond-expression", "torsion-expression", "global", "cutoff"],
)
def test_unsupported_custom_forces_are_refused_by_name(make, message):
    system = _toy_system()
    force = make()
    if isinstance(force, openmm.CustomNonbondedForce):
        for _ in range(7):
            force.addParticle([])
    system.addForce(force)
    with pytest.raises(ConfigError, match=message) as caught:
        forcefield_from_system(system)
    text = str(caught.value)
    assert "\n" not in text
    if "unsupported force" in text:
        assert "charmm36.xml" in text and "amber14-all.xml" in text


def _with_global(force):
    force.addGlobalParameter("scale", 1.0)
    force.addPerTorsionParameter("k")
    force.addPerTorsionParameter("theta0")
    return force


def _with_cutoff(force):
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    return force


def test_a_molecule_in_charmm36(dipeptide):
    from coarseflow.targets.molecule import Molecule

    path, _, positions, _, _ = dipeptide
    m = Molecule(pdb=path, forcefield=CHARMM)
    assert m.n_atoms == 22 and m.residue_labels == ["ALA2"]
    assert m.x_bijection() is not None  # the bond graph (no Urey-Bradley pairs) holds phi / psi
    assert len(m.info.rotors) == 3  # the three methyls, equivalent in CHARMM36 too
    ff = forcefield_from_system(build_system(path, CHARMM)[2])
    energy = float(m.energy(m.reference_x)) * m.kT
    assert energy == pytest.approx(float(ff.energy(jnp.asarray(positions))), rel=1e-9, abs=1e-6)
