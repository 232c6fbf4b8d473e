"""Read the nonbonded forces of an OpenMM System into JAX terms (``openmm_reader`` calls them):
NonbondedForce (no cutoff, with its exceptions), GBSAOBCForce (OBC2) and the one CustomGBForce:
app.OBC1's as GBSAOBC, any other Amber GB model through ``gb_reader``.
"""

from __future__ import annotations

import re

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.forcefield.bonded_reader import _array
from coarseflow.forcefield.gb_reader import read_amber_gb
from coarseflow.forcefield.geometry import displacements
from coarseflow.forcefield.supported import SUPPORTED
from coarseflow.forcefield.terms import GBSAOBC, OBC_DIELECTRIC_OFFSET, AbstractTerm, Nonbonded


def _read_nonbonded(forces, n_atoms, gather) -> Nonbonded:
    from openmm import unit

    # Two NonbondedForces would need two sets of per-atom parameters; no force field does this.
    if len(forces) > 1:
        raise ConfigError(
            f"force field: the System has {len(forces)} NonbondedForces; only one is supported"
        )
    (force,) = forces
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise ConfigError(
            "force field: NonbondedForce has parameter offsets (global-parameter dependent "
            "charges or LJ); they are not supported"
        )
    if not force.getIncludeDirectSpace():
        raise ConfigError("force field: NonbondedForce excludes direct space; not supported")
    if force.getNumParticles() != n_atoms:
        raise ConfigError(
            f"force field: NonbondedForce has {force.getNumParticles()} particles, "
            f"the System {n_atoms}"
        )
    charge, sigma, epsilon = np.zeros(n_atoms), np.zeros(n_atoms), np.zeros(n_atoms)
    for i in range(n_atoms):
        q, s, e = force.getParticleParameters(i)
        charge[i] = q.value_in_unit(unit.elementary_charge)
        sigma[i] = s.value_in_unit(unit.nanometer)
        epsilon[i] = e.value_in_unit(unit.kilojoule_per_mole)

    # Exceptions replace the pair interaction entirely; excluded pairs are exceptions with
    # qq = eps = 0, which contribute nothing and are dropped from the list.
    pair_mask = np.triu(np.ones((n_atoms, n_atoms), dtype=bool), k=1)
    exc_atoms, exc_qq, exc_sigma, exc_eps = [], [], [], []
    for x in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(x)
        pair_mask[min(i, j), max(i, j)] = False
        qq = qq.value_in_unit(unit.elementary_charge**2)
        e = e.value_in_unit(unit.kilojoule_per_mole)
        if qq != 0.0 or e != 0.0:
            exc_atoms.append((i, j))
            exc_qq.append(qq)
            exc_sigma.append(s.value_in_unit(unit.nanometer))
            exc_eps.append(e)
    exc_atoms = np.asarray(exc_atoms, dtype=np.int32).reshape(-1, 2)
    return Nonbonded(
        charge=_array(charge),
        sigma=_array(sigma),
        sqrt_epsilon=_array(np.sqrt(epsilon)),
        pair_mask=_array(pair_mask, bool, (n_atoms, n_atoms)),
        exception_pairs=displacements(exc_atoms[:, 1], exc_atoms[:, 0], n_atoms, gather),
        exception_charge_prod=_array(exc_qq),
        exception_sigma=_array(exc_sigma),
        exception_epsilon=_array(exc_eps),
    )


def _read_gbsa(forces, n_atoms, gather) -> GBSAOBC:
    from openmm import unit

    # Born radii depend non-linearly on all atoms, so two GBSA forces do not merge.
    if len(forces) > 1:
        raise ConfigError(
            f"force field: the System has {len(forces)} GBSAOBCForces; only one is supported"
        )
    (force,) = forces
    if force.getNumParticles() != n_atoms:
        raise ConfigError(
            f"force field: GBSAOBCForce has {force.getNumParticles()} particles, "
            f"the System {n_atoms}"
        )
    charge, radius, scale = np.zeros(n_atoms), np.zeros(n_atoms), np.zeros(n_atoms)
    for i in range(n_atoms):
        q, r, s = force.getParticleParameters(i)
        charge[i] = q.value_in_unit(unit.elementary_charge)
        radius[i] = r.value_in_unit(unit.nanometer)
        scale[i] = s
    gamma = force.getSurfaceAreaEnergy().value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2)
    return GBSAOBC(
        charge=_array(charge),
        radius=_array(radius),
        scale=_array(scale),
        solute_dielectric=float(force.getSoluteDielectric()),
        solvent_dielectric=float(force.getSolventDielectric()),
        surface_area_energy=float(gamma),
    )


def _obc1_template(force):
    """OpenMM's own ``GBSAOBC1Force`` (no cutoff, no salt) with the dielectrics and surface
    term of ``force`` if ``force`` is exactly such a force, else None."""
    from openmm.app.internal.customgbforces import GBSAOBC1Force

    def layout(f):
        return (
            [f.getPerParticleParameterName(i) for i in range(f.getNumPerParticleParameters())],
            [f.getComputedValueParameters(i) for i in range(f.getNumComputedValues())],
            [f.getEnergyTermParameters(i) for i in range(f.getNumEnergyTerms())],
            f.getNumGlobalParameters(),
            f.getNumTabulatedFunctions(),
            f.getNumEnergyParameterDerivatives(),
        )

    if not force.getNumEnergyTerms():
        return None
    found = re.search(
        r"; solventDielectric=([^;]+); soluteDielectric=([^;]+); kappa=0;",
        force.getEnergyTermParameters(0)[0],
    )
    if found is None:
        return None
    try:
        solvent, solute = float(found.group(1)), float(found.group(2))
    except ValueError:
        return None
    target = layout(force)
    for surface in ("ACE", None):
        template = GBSAOBC1Force(solvent, solute, surface, None, 0.0)
        if layout(template) == target:
            return template, solvent, solute
    return None


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    if found is None:  # an OpenMM whose GBSAOBC1Force is written differently
        raise ConfigError(
            "force field: this OpenMM's OBC1 CustomGBForce (GBSAOBC1Force) is not written as "
            f"coarseflow expects ({pattern!r} not in {text!r})"
        )
    return float(found.group(1))


def _read_custom_gb(forces, n_atoms, gather) -> AbstractTerm:
    """The one CustomGBForce: app.OBC1's as GBSAOBC (as before), any other Amber GB model of
    ``implicit/*.xml`` as AmberGB; anything else is refused naming what works."""
    if len(forces) > 1:
        raise ConfigError(
            f"force field: the System has {len(forces)} CustomGBForces; only one is supported"
        )
    if _obc1_template(forces[0]) is not None:
        return _read_obc1(forces, n_atoms, gather)
    return read_amber_gb(forces[0], n_atoms, SUPPORTED)


def _read_obc1(forces, n_atoms, gather) -> GBSAOBC:
    """The CustomGBForce of ``implicitSolvent=app.OBC1`` (recognised by comparing its
    parameters, computed values and energy expressions with OpenMM's own GBSAOBC1Force) as a
    GBSAOBC term with the OBC1 constants, read from those expressions."""
    if len(forces) > 1:
        raise ConfigError(
            f"force field: the System has {len(forces)} CustomGBForces; only one is supported"
        )
    (force,) = forces
    found = _obc1_template(force)
    if found is None:  # _read_custom_gb sends any other CustomGBForce to gb_reader
        return read_amber_gb(force, n_atoms, SUPPORTED)
    template, solvent, solute = found
    if solvent <= 0.0 or solute <= 0.0:
        raise ConfigError(
            f"force field: CustomGBForce (OBC1) has dielectrics {solute}, {solvent}; "
            "expected both > 0"
        )
    if force.getNumParticles() != n_atoms:
        raise ConfigError(
            f"force field: CustomGBForce has {force.getNumParticles()} particles, "
            f"the System {n_atoms}"
        )
    number = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
    born = template.getComputedValueParameters(1)[1]
    alpha = _number(rf"tanh\({number}\*psi\+", born)
    gamma = _number(rf"\+{number}\*psi\^3\)", born)
    offset = _number(rf"offset={number}", born)
    coulomb = _number(rf"^-0\.5\*{number}\*", template.getEnergyTermParameters(0)[0])
    surface = 0.0
    if template.getNumEnergyTerms() == 3:  # the ACE term: 4 pi gamma_SA (radius+0.14)^2 ...
        ace = _number(rf"^{number}\*\(radius\+0\.14\)\^2", template.getEnergyTermParameters(1)[0])
        surface = ace / (4.0 * np.pi)
    if offset != OBC_DIELECTRIC_OFFSET:
        raise ConfigError(f"force field: OBC1 dielectric offset {offset} nm, expected 0.009")

    charge, radius, scale = np.zeros(n_atoms), np.zeros(n_atoms), np.zeros(n_atoms)
    for i in range(n_atoms):
        q, offset_radius, scaled_radius = force.getParticleParameters(i)
        if not offset_radius > 0.0:
            raise ConfigError(
                f"force field: CustomGBForce (OBC1) particle {i} has offset radius "
                f"{offset_radius} nm; expected > 0"
            )
        charge[i] = q
        radius[i] = offset_radius + OBC_DIELECTRIC_OFFSET
        scale[i] = scaled_radius / offset_radius
    return GBSAOBC(
        charge=_array(charge),
        radius=_array(radius),
        scale=_array(scale),
        solute_dielectric=solute,
        solvent_dielectric=solvent,
        surface_area_energy=float(surface),
        alpha=alpha,
        beta=0.0,
        gamma=gamma,
        coulomb_constant=coulomb,
        engulfed_correction=False,
    )
