"""Read an OpenMM System once into arrays: ``forcefield_from_system(system) -> ForceField``.

OpenMM is only the input layer: after this, the energy is pure JAX. Supported forces are
HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, CMAPTorsionForce, NonbondedForce,
GBSAOBCForce (OBC2), the CustomGBForces of OpenMM's Amber GB models (HCT, OBC1, OBC2, GBn,
GBn2: ``implicit/*.xml`` and ``implicitSolvent=app.OBC1``; no salt; ``gb_reader``) and the
custom forces of OpenMM's CHARMM36 (impropers, 1-4 Lennard-Jones, Urey-Bradley, the
Lennard-Jones tables with NBFIX; ``custom_reader``), all without cutoffs or periodic
boundaries; CMMotionRemover is ignored (it is not an energy).
Anything else -- another force class or CustomGBForce, a cutoff, constraints, virtual sites --
raises a ConfigError naming it and the force fields that work (``supported``), rather than
silently giving a different energy from OpenMM's.
"""

from __future__ import annotations

import re

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.forcefield.cmap import CMAPTorsions, patch_coefficients
from coarseflow.forcefield.custom_reader import (
    read_custom_bonds,
    read_custom_nonbonded,
    read_custom_torsions,
)
from coarseflow.forcefield.energy import ForceField
from coarseflow.forcefield.gb_reader import read_amber_gb
from coarseflow.forcefield.geometry import Gather, displacements
from coarseflow.forcefield.supported import SUPPORTED, SUPPORTED_FORCES
from coarseflow.forcefield.terms import (
    GBSAOBC,
    OBC_DIELECTRIC_OFFSET,
    AbstractTerm,
    HarmonicAngles,
    HarmonicBonds,
    Nonbonded,
    PeriodicTorsions,
)

_NONBONDED_METHODS = {0: "NoCutoff", 1: "CutoffNonPeriodic", 2: "CutoffPeriodic"}
_NONBONDED_METHODS.update({3: "Ewald", 4: "PME", 5: "LJPME"})


def forcefield_from_system(system, *, gather: Gather = "auto") -> ForceField:
    """The energy of an OpenMM ``System`` as a pure-JAX ForceField (nm in, kJ/mol out).

    Forces of the same class are merged into one term. Raises ConfigError for any force,
    option or constraint the JAX terms do not reproduce exactly. ``gather`` chooses how bonded
    terms collect their atoms: "matmul" (fast for small molecules), "index" (scales to large
    ones), or "auto" (matmul while cheap); the energies agree to rounding.
    """
    import openmm

    if gather not in ("auto", "matmul", "index"):
        raise ConfigError(
            f"force field: gather: expected 'auto', 'matmul' or 'index', got {gather!r}"
        )

    n_atoms = system.getNumParticles()
    if system.getNumConstraints() > 0:
        raise ConfigError(
            f"force field: the System has {system.getNumConstraints()} constraints; "
            "build it with constraints=None"
        )
    virtual = [i for i in range(n_atoms) if system.isVirtualSite(i)]
    if virtual:
        raise ConfigError(
            f"force field: the System has {len(virtual)} virtual sites (first: particle "
            f"{virtual[0]}); virtual sites are not supported"
        )

    readers = {
        openmm.HarmonicBondForce: _read_bonds,
        openmm.HarmonicAngleForce: _read_angles,
        openmm.PeriodicTorsionForce: _read_torsions,
        openmm.CMAPTorsionForce: _read_cmap,
        openmm.NonbondedForce: _read_nonbonded,
        openmm.GBSAOBCForce: _read_gbsa,
        openmm.CustomGBForce: _read_custom_gb,
        openmm.CustomTorsionForce: read_custom_torsions,
        openmm.CustomBondForce: read_custom_bonds,
        openmm.CustomNonbondedForce: read_custom_nonbonded,
    }
    collected: dict[type, list] = {}
    for force in system.getForces():
        kind = type(force)
        if kind is openmm.CMMotionRemover:
            continue
        if kind not in readers:
            raise ConfigError(
                f"force field: unsupported force '{kind.__name__}' (supported forces: "
                f"{SUPPORTED_FORCES}; force fields that work: {SUPPORTED})"
            )
        gb_forces = (openmm.GBSAOBCForce, openmm.CustomGBForce)
        if kind in (openmm.NonbondedForce, openmm.CustomNonbondedForce, *gb_forces):
            _check_no_cutoff(force, kind.__name__)
        if force.usesPeriodicBoundaryConditions():
            raise ConfigError(
                f"force field: {kind.__name__} uses periodic boundary conditions; "
                "only non-periodic systems are supported"
            )
        collected.setdefault(kind, []).append(force)
    if all(kind in collected for kind in gb_forces):
        raise ConfigError(
            "force field: the System has both a GBSAOBCForce and a CustomGBForce; only one "
            "implicit-solvent force is supported"
        )

    terms: list[AbstractTerm] = []
    for kind, reader in readers.items():
        if kind in collected:
            read = reader(collected[kind], n_atoms, gather)  # a term, or a tuple of terms
            terms.extend(read if isinstance(read, tuple) else (read,))
    return ForceField(terms=tuple(terms), n_atoms=n_atoms)


def _array(values, dtype=np.float64, shape=(-1,)):
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(values, dtype=dtype).reshape(shape))


def _read_bonds(forces, n_atoms, gather) -> HarmonicBonds:
    from openmm import unit

    atoms, length, k = [], [], []
    for force in forces:
        for b in range(force.getNumBonds()):
            i, j, r0, kb = force.getBondParameters(b)
            atoms.append((i, j))
            length.append(r0.value_in_unit(unit.nanometer))
            k.append(kb.value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2))
    atoms = np.asarray(atoms, dtype=np.int32).reshape(-1, 2)
    return HarmonicBonds(
        bonds=displacements(atoms[:, 0], atoms[:, 1], n_atoms, gather),
        length=_array(length),
        k=_array(k),
    )


def _read_angles(forces, n_atoms, gather) -> HarmonicAngles:
    from openmm import unit

    atoms, theta0, k = [], [], []
    for force in forces:
        for a in range(force.getNumAngles()):
            i, j, m, t0, ka = force.getAngleParameters(a)
            atoms.append((i, j, m))
            theta0.append(t0.value_in_unit(unit.radian))
            k.append(ka.value_in_unit(unit.kilojoule_per_mole / unit.radian**2))
    atoms = np.asarray(atoms, dtype=np.int32).reshape(-1, 3)
    vertex = np.concatenate([atoms[:, 1], atoms[:, 1]])
    return HarmonicAngles(
        arms=displacements(vertex, np.concatenate([atoms[:, 0], atoms[:, 2]]), n_atoms, gather),
        theta0=_array(theta0),
        k=_array(k),
    )


def _read_torsions(forces, n_atoms, gather) -> PeriodicTorsions:
    from openmm import unit

    atoms, periodicity, phase, k = [], [], [], []
    for force in forces:
        for t in range(force.getNumTorsions()):
            i, j, m, n, per, ph, kt = force.getTorsionParameters(t)
            atoms.append((i, j, m, n))
            if per < 0:
                raise ConfigError(f"force field: torsion {t} has periodicity {per} < 0")
            periodicity.append(int(per))
            phase.append(ph.value_in_unit(unit.radian))
            k.append(kt.value_in_unit(unit.kilojoule_per_mole))
    atoms = np.asarray(atoms, dtype=np.int32).reshape(-1, 4)
    # Bond vectors stacked as [all p0->p1, all p1->p2, all p2->p3].
    start, end = atoms[:, :3].T.reshape(-1), atoms[:, 1:].T.reshape(-1)
    return PeriodicTorsions(
        bonds=displacements(start, end, n_atoms, gather),
        periodicity=_array(periodicity),
        phase=_array(phase),
        k=_array(k),
        max_periodicity=max(periodicity, default=0),
    )


def _check_no_cutoff(force, name: str) -> None:
    method = force.getNonbondedMethod()
    if method != 0:
        raise ConfigError(
            f"force field: {name} uses cutoff method {_NONBONDED_METHODS.get(method, method)}; "
            "only NoCutoff is supported"
        )


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


def _read_cmap(forces, n_atoms, gather) -> CMAPTorsions:
    """All CMAPTorsionForces as one term: their maps' bicubic patches stacked, each torsion
    pair pointing at its map's block."""
    from openmm import unit

    blocks, offsets, atoms, sizes = [], [], [], set()
    for force in forces:
        first_map = len(blocks)  # maps of earlier forces come first
        for m in range(force.getNumMaps()):
            size, energy = force.getMapParameters(m)
            energy = np.asarray(energy.value_in_unit(unit.kilojoule_per_mole), np.float64)
            # OpenMM: energy[i + size * j] at (first angle i delta, second angle j delta).
            blocks.append(patch_coefficients(energy.reshape(size, size).T).reshape(-1, 16))
            sizes.add(size)
        for t in range(force.getNumTorsions()):
            m, *indices = force.getTorsionParameters(t)
            offsets.append(first_map + m)
            atoms.append(indices)
    if len(sizes) > 1:
        raise ConfigError(
            f"force field: CMAPTorsionForce maps of different sizes {sorted(sizes)}; "
            "one size is supported"
        )
    size = sizes.pop() if sizes else 1
    # A map's index -> the first row of its block (every block has size^2 rows).
    cell_offset = np.asarray(offsets, dtype=np.int32) * size * size
    atoms = np.asarray(atoms, dtype=np.int32).reshape(-1, 8)
    # Bond vectors stacked as [first torsions: p0->p1, p1->p2, p2->p3; second torsions: same].
    start = np.concatenate([atoms[:, 0:3].T.reshape(-1), atoms[:, 4:7].T.reshape(-1)])
    end = np.concatenate([atoms[:, 1:4].T.reshape(-1), atoms[:, 5:8].T.reshape(-1)])
    coefficients = np.concatenate(blocks) if blocks else np.zeros((1, 16))
    return CMAPTorsions(
        bonds=displacements(start, end, n_atoms, gather),
        cell_offset=_array(cell_offset, np.int32),
        coefficients=_array(coefficients, shape=(-1, 16)),
        size=size,
    )


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
