"""OpenMM's implicit/*.xml generalized-Born models (HCT, OBC1, OBC2, GBn, GBn2) with amber14:
the JAX term against OpenMM's Reference platform, energy and forces, on alanine dipeptide and
ACE-GLY-SER-NME in perturbed conformations; what is refused; the molecule target end to end."""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.forcefield import (  # noqa: E402
    GBSAOBC,
    AmberGB,
    build_system,
    forcefield_from_system,
)
from coarseflow.forcefield.gb import _gb_parts  # noqa: E402

ALANINE = Path(str(importlib.resources.files("coarseflow.data") / "alanine_dipeptide.pdb"))
SECOND = Path(__file__).parent / "data" / "ace_gly_ser_nme.pdb"
MODELS = ("obc2", "gbn2", "obc1", "gbn", "hct")
N_CONFIGS = 8
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


def openmm_energies(system, configs, force_class: str):
    """OpenMM Reference energies (B,) and forces (B, n, 3) of the forces of one class, and of
    the whole System."""
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
    group = {k for k, f in enumerate(system.getForces()) if type(f).__name__ == force_class}
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    out = {"term": ([], []), "total": ([], [])}
    for x in configs:
        context.setPositions(x)
        for key, groups in (("term", group), ("total", None)):
            kwargs = {} if groups is None else {"groups": groups}
            state = context.getState(getEnergy=True, getForces=True, **kwargs)
            out[key][0].append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            out[key][1].append(state.getForces(asNumpy=True).value_in_unit(KJ_NM))
    return {k: (np.array(e), np.array(f)) for k, (e, f) in out.items()}


@jax.jit
def jax_energies(ff, configs):
    """(gbsa term energy (B,), its gradient (B, n, 3), total energy (B,))."""

    def one(x):
        (gb,) = [t for t in ff.terms if t.name == "gbsa"]
        energy, gradient = jax.value_and_grad(gb.energy)(x)
        return energy, gradient, ff.energy(x)

    return jax.vmap(one)(configs)


def relative_errors(ff, system, configs):
    """(max relative energy error of the GB term, of its forces (over the largest force),
    of the total energy), and the GB energies."""
    reference = openmm_energies(system, configs, "CustomGBForce")
    energy, gradient, total = (np.asarray(a) for a in jax_energies(ff, jnp.asarray(configs)))
    e_ref, f_ref = reference["term"]
    return (
        np.max(np.abs(energy - e_ref) / np.abs(e_ref)),
        np.abs(-gradient - f_ref).max() / np.abs(f_ref).max(),
        np.max(np.abs(total - reference["total"][0]) / np.abs(reference["total"][0])),
        e_ref,
    )


def perturbed(positions, seed, sigma=0.02):
    rng = np.random.default_rng(seed)
    return positions[None] + sigma * rng.normal(size=(N_CONFIGS, *positions.shape))


@pytest.mark.parametrize("pdb", [ALANINE, SECOND], ids=["alanine", "ace_gly_ser_nme"])
@pytest.mark.parametrize("model", MODELS)
def test_implicit_model_matches_openmm_to_1e6(model, pdb):
    _, positions, system = build_system(pdb, ["amber14-all.xml", f"implicit/{model}.xml"])
    ff = forcefield_from_system(system)
    (gb,) = [t for t in ff.terms if t.name == "gbsa"]
    # implicit/obc1.xml is app.OBC1's force, read as before into GBSAOBC
    assert isinstance(gb, GBSAOBC if model == "obc1" else AmberGB)
    if model != "obc1":
        assert gb.model.lower() == model and gb.ace > 0.0
    configs = perturbed(positions, seed=len(model))
    energy_error, force_error, total_error, energies = relative_errors(ff, system, configs)
    assert energy_error <= 1e-6 and force_error <= 1e-6 and total_error <= 1e-6
    assert np.ptp(energies) > 1.0  # the perturbations move the solvation energy


def test_the_models_differ_and_the_neck_matters():
    """Each model gives its own energy; without its neck term GBn2 is off by far more than
    the tolerance (so the tables are used, and used right)."""
    _, positions, _ = build_system(ALANINE)
    energies = {}
    for model in MODELS:
        _, _, system = build_system(ALANINE, ["amber14-all.xml", f"implicit/{model}.xml"])
        (gb,) = [t for t in forcefield_from_system(system).terms if t.name == "gbsa"]
        energies[model] = float(gb.energy(jnp.asarray(positions)))
        if model == "gbn2":
            no_neck = dataclasses.replace(gb, neck_scale=0.0)
            assert abs(float(no_neck.energy(jnp.asarray(positions))) - energies[model]) > 1.0
    values = sorted(energies.values())
    assert min(np.diff(values)) > 0.1, energies


def test_analytic_gradient_equals_autodiff_and_float32_is_close():
    _, positions, system = build_system(ALANINE, ["amber14-all.xml", "implicit/gbn2.xml"])
    (gb,) = [t for t in forcefield_from_system(system).terms if t.name == "gbsa"]
    x = jnp.asarray(perturbed(positions, seed=3)[0])
    v = jnp.asarray(np.random.default_rng(4).normal(size=x.shape))

    def plain(x):  # no custom JVP: autodiff through the Born radii
        return _gb_parts(gb._static(), x, *gb._params(x.dtype), with_gradient=False)[0]

    @jax.jit
    def derivatives(x, v):
        """Gradients and Hessian-vector products, analytic-gradient term and plain."""
        return [jax.jvp(jax.grad(f), (x,), (v,)) for f in (gb.energy, plain)]

    (g, hvp), (g_plain, hvp_plain) = derivatives(x, v)
    np.testing.assert_allclose(g, g_plain, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hvp, hvp_plain, rtol=1e-7, atol=1e-6)
    e32 = gb.energy(x.astype(jnp.float32))
    assert e32.dtype == jnp.float32
    np.testing.assert_allclose(float(e32), float(gb.energy(x)), rtol=1e-4)


def _custom_gb_system(force):
    """alanine dipeptide in amber14 with ``force`` (filled from the topology) as its GB."""
    pdb = app.PDBFile(str(ALANINE))
    _, _, system = build_system(ALANINE, ["amber14-all.xml"])
    (nonbonded,) = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    standard = type(force).getStandardParameters(pdb.topology)
    for i, p in enumerate(standard):
        charge = nonbonded.getParticleParameters(i)[0]
        force.addParticle([charge, *p])
    force.finalize()
    system.addForce(force)
    return system


def test_salt_and_changed_expressions_are_refused_naming_what_works():
    from openmm.app.internal.customgbforces import GBSAGBn2Force, GBSAOBC2Force

    message = (
        r"^force field: unsupported CustomGBForce: only OpenMM's Amber GB models HCT, OBC1, "
        r"OBC2, GBn, GBn2 .*supported: .*amber14-all\.xml.*implicit/gbn2\.xml"
    )
    salt = GBSAGBn2Force(78.5, 1.0, "ACE", None, 1.0)  # kappa > 0: salt screening
    with pytest.raises(ConfigError, match=message):
        forcefield_from_system(_custom_gb_system(salt))
    changed = GBSAOBC2Force(78.5, 1.0, "ACE", None, 0.0)
    name, expression, kind = "B", *changed.getComputedValueParameters(1)[1:]
    changed.setComputedValueParameters(1, name, expression.replace("4.85", "4.9"), kind)
    with pytest.raises(ConfigError, match=message):
        forcefield_from_system(_custom_gb_system(changed))
    with pytest.raises(ConfigError, match=message) as caught:
        forcefield_from_system(_custom_gb_system(GBSAOBC2Force(78.5, 1.0, "ACE", None, 0.5)))
    assert "\n" not in str(caught.value)  # one line


def test_other_dielectrics_and_no_surface_term_are_read():
    from openmm.app.internal.customgbforces import GBSAGBnForce

    system = _custom_gb_system(GBSAGBnForce(80.0, 2.0, None, None, 0.0))
    ff = forcefield_from_system(system)
    (gb,) = [t for t in ff.terms if t.name == "gbsa"]
    assert (gb.model, gb.ace, gb.solvent_dielectric, gb.solute_dielectric) == (
        "GBn",
        0.0,
        80.0,
        2.0,
    )
    _, positions, _ = build_system(ALANINE)
    energy_error, force_error, _, _ = relative_errors(ff, system, perturbed(positions, seed=9))
    assert energy_error <= 1e-6 and force_error <= 1e-6


def test_molecule_target_in_amber14_gbn2_has_openmm_energy():
    from coarseflow.targets.molecule import Molecule

    files = ["amber14-all.xml", "implicit/gbn2.xml"]
    mol = Molecule(forcefield=files)
    assert "gbsa" in mol.forcefield.term_names
    pdb = app.PDBFile(str(ALANINE))
    system = app.ForceField(*files).createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
    )
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    configs = perturbed(positions, seed=11)[:2]
    reference = openmm_energies(system, configs, "CustomGBForce")["total"][0]
    x = jax.vmap(mol.free_coordinates)(jnp.asarray(configs))
    energy = np.asarray(jax.vmap(mol.energy)(x)) * mol.kT  # reduced -> kJ/mol
    np.testing.assert_allclose(energy, reference, rtol=1e-6)
