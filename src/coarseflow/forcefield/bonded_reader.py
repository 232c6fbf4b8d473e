"""Read the bonded forces of an OpenMM System into JAX terms (``openmm_reader`` calls them):
HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce and CMAPTorsionForce, every force of
a class merged into one term.
"""

from __future__ import annotations

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.forcefield.cmap import CMAPTorsions, patch_coefficients
from coarseflow.forcefield.geometry import displacements
from coarseflow.forcefield.terms import HarmonicAngles, HarmonicBonds, PeriodicTorsions


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
