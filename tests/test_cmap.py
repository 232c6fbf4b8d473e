"""CMAPTorsionForce: the bicubic map of ff19SB (amber19-all.xml) and of random maps on a toy
chain, energy and forces against OpenMM's Reference platform; the periodic spline slopes."""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import unit  # noqa: E402

from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.forcefield import CMAPTorsions, build_system, forcefield_from_system  # noqa: E402
from coarseflow.forcefield.cmap import patch_coefficients, periodic_spline_slopes  # noqa: E402

ALANINE = Path(str(importlib.resources.files("coarseflow.data") / "alanine_dipeptide.pdb"))
SECOND = Path(__file__).parent / "data" / "ace_gly_ser_nme.pdb"
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


def openmm_reference(system, configs, force_class: str | None):
    """Energies (B,) and forces (B, n, 3) of one force class (None: the whole System)."""
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
    kwargs = {}
    if force_class is not None:
        groups = {k for k, f in enumerate(system.getForces()) if type(f).__name__ == force_class}
        kwargs["groups"] = groups
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    energies, forces = [], []
    for x in configs:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True, **kwargs)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ_NM))
    return np.array(energies), np.array(forces)


@jax.jit
def cmap_and_total(ff, configs):
    def one(x):
        (cmap,) = [t for t in ff.terms if t.name == "cmap"]
        energy, gradient = jax.value_and_grad(cmap.energy)(x)
        return energy, gradient, ff.energy(x)

    return jax.vmap(one)(configs)


@pytest.mark.parametrize(
    "pdb, files",
    [
        (ALANINE, ["amber19-all.xml"]),
        (SECOND, ["amber19-all.xml", "implicit/gbn2.xml"]),
    ],
    ids=["alanine-ff19SB-vacuum", "ace_gly_ser_nme-ff19SB-gbn2"],
)
def test_ff19sb_cmap_matches_openmm_to_1e6(pdb, files):
    _, positions, system = build_system(pdb, files)
    ff = forcefield_from_system(system)
    assert "cmap" in ff.term_names
    # wide perturbations: the backbone dihedrals visit many cells of the map
    configs = positions[None] + 0.03 * np.random.default_rng(0).normal(size=(8, *positions.shape))
    e_ref, f_ref = openmm_reference(system, configs, "CMAPTorsionForce")
    total_ref, _ = openmm_reference(system, configs, None)
    energy, gradient, total = (np.asarray(a) for a in cmap_and_total(ff, jnp.asarray(configs)))
    assert np.max(np.abs(energy - e_ref) / np.abs(e_ref)) <= 1e-6
    assert np.abs(-gradient - f_ref).max() <= 1e-6 * np.abs(f_ref).max()
    np.testing.assert_allclose(total, total_ref, rtol=1e-6)
    assert np.ptp(e_ref) > 1.0


def _toy_chain_system(maps):
    """7 particles on a zig-zag chain; torsion pairs (0-1-2-3, 1-2-3-4) on map 0 and
    (2-3-4-5, 3-4-5-6) on the last map; ``maps``: list of (size, size) energy arrays
    indexed [first angle, second angle]."""
    system = openmm.System()
    force = openmm.CMAPTorsionForce()
    for _ in range(7):
        system.addParticle(12.0)
    for grid in maps:
        size = grid.shape[0]
        # OpenMM's layout: energy[i + size * j] at (i delta, j delta)
        force.addMap(size, grid.T.reshape(-1).tolist())
    force.addTorsion(0, 0, 1, 2, 3, 1, 2, 3, 4)
    force.addTorsion(len(maps) - 1, 2, 3, 4, 5, 3, 4, 5, 6)
    system.addForce(force)
    return system


def _chain_configs(n, seed):
    """Chains whose dihedrals cover the whole circle, including the wrap at 0 = 2 pi."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.15 * k, 0.1 * (k % 2), 0.0] for k in range(7)])
    return base[None] + 0.12 * rng.normal(size=(n, 7, 3))


@pytest.mark.parametrize("sizes", [(24, 24), (10, 10)], ids=["24", "10"])
def test_random_maps_match_openmm_over_the_whole_circle(sizes):
    rng = np.random.default_rng(sizes[0])
    maps = [rng.normal(scale=5.0, size=(s, s)) for s in sizes]
    system = _toy_chain_system(maps)
    configs = _chain_configs(64, seed=1)
    e_ref, f_ref = openmm_reference(system, configs, None)
    ff = forcefield_from_system(system)
    assert isinstance(ff.terms[0], CMAPTorsions)
    energy, gradient, _ = (np.asarray(a) for a in cmap_and_total(ff, jnp.asarray(configs)))
    np.testing.assert_allclose(energy, e_ref, rtol=1e-6, atol=1e-9 * np.abs(e_ref).max())
    assert np.abs(-gradient - f_ref).max() <= 1e-6 * np.abs(f_ref).max()
    # the dihedrals really cover the circle: every quadrant of both angles
    from coarseflow.forcefield import dihedrals

    angles = dihedrals(configs, np.array([[0, 1, 2, 3], [1, 2, 3, 4]]))
    assert all(
        np.histogram(angles[:, k], bins=4, range=(-math.pi, math.pi))[0].min() > 0 for k in (0, 1)
    )


def test_maps_of_different_sizes_are_refused():
    rng = np.random.default_rng(5)
    system = _toy_chain_system([rng.normal(size=(24, 24)), rng.normal(size=(12, 12))])
    with pytest.raises(ConfigError, match=r"CMAPTorsionForce maps of different sizes \[12, 24\]"):
        forcefield_from_system(system)


def test_patches_interpolate_the_map_and_are_smooth():
    """A patch's corner is the map's value; neighbouring patches agree in value and slope at
    their shared edge (the spline slopes make the surface C1); a periodic spline through
    sin has slopes ~cos."""
    rng = np.random.default_rng(2)
    size = 12
    energy = rng.normal(size=(size, size))
    c = patch_coefficients(energy)
    np.testing.assert_allclose(c[:, :, 0, 0], energy, atol=1e-12)
    b = 0.37
    powers = b ** np.arange(4)
    # at a = 1 in cell (s, t) and a = 0 in cell (s + 1, t): value and d/da agree
    value_end = np.einsum("stkl,l->st", c.sum(axis=2, keepdims=True), powers)
    value_start = np.einsum("stl,l->st", c[:, :, 0, :], powers)
    np.testing.assert_allclose(value_end, np.roll(value_start, -1, axis=0), atol=1e-10)
    slope_end = np.einsum("stkl,k,l->st", c, np.arange(4.0), powers)
    slope_start = np.einsum("stl,l->st", c[:, :, 1, :], powers)
    np.testing.assert_allclose(slope_end, np.roll(slope_start, -1, axis=0), atol=1e-10)
    x = np.arange(48) * 2 * math.pi / 48
    np.testing.assert_allclose(periodic_spline_slopes(np.sin(x), x[1]), np.cos(x), atol=1e-5)


def test_unsupported_force_names_the_force_fields_that_work():
    _, _, system = build_system(ALANINE)
    system.addForce(openmm.CustomBondForce("r"))
    with pytest.raises(ConfigError) as caught:
        forcefield_from_system(system)
    message = str(caught.value)
    assert "\n" not in message and "unsupported force 'CustomBondForce'" in message
    for name in ("CMAPTorsionForce", "amber14-all.xml", "implicit/gbn2.xml", "amber19-all.xml"):
        assert name in message
