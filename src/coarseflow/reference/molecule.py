"""The molecule the reference samples: its OpenMM System read from a [target] table, the
structure minimised by OpenMM, the pure-JAX force field, and what is recorded of each frame
(phi / psi, radius of gyration, cis peptide bonds, inverted C-alpha chirality)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.analysis.observables import dihedral, phi_psi_indices, radius_of_gyration
from coarseflow.errors import ConfigError


def openmm_minimise(system, positions, max_iterations: int) -> tuple[np.ndarray, float]:
    """A brief minimisation with OpenMM's L-BFGS (Reference platform, tolerance 1 kJ/mol/nm).

    positions: (n_atoms, 3) nm. Returns the minimised positions (n_atoms, 3) nm and the
    potential energy there (kJ/mol).
    """
    import openmm
    from openmm import unit

    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(np.asarray(positions, dtype=np.float64) * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, max_iterations)
    state = context.getState(getPositions=True, getEnergy=True)
    return (
        np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)),
        state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
    )


class ReferenceMolecule:
    """What the reference needs of a [target] table with kind = "molecule": the files are those
    a :class:`coarseflow.targets.molecule.Molecule` of the table reads (its registry), the
    structure is minimised by OpenMM, all atoms move.

    Attributes: pdb_path, forcefield (the files; None: the default of the file), temperature
    (K), topology and system (OpenMM), mdtraj_topology, masses (n_atoms,) Da, forcefield_jax
    (the pure-JAX energy terms), phi_atoms / psi_atoms (m, 4), positions (n_atoms, 3) nm and
    minimized_energy (kJ/mol) of the minimised structure, chirality (c,) its C-alpha
    handedness (+-1).
    """

    def __init__(self, table: dict[str, Any]):
        kind = table.get("kind")
        if kind != "molecule":
            raise ConfigError(
                f'[target] kind: `coarseflow reference` needs kind = "molecule", got {kind!r}'
            )
        from coarseflow.targets.molecule.registry import forcefield_files, resolve_structure

        # None: the default of the file (build_system)
        self.forcefield = forcefield_files(table.get("forcefield"))
        self.pdb_path = Path(
            resolve_structure(table.get("pdb"), table.get("sequence"), self.forcefield)[0]
        )
        temperature = table.get("temperature", 300.0)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not (temperature > 0)
        ):
            raise ConfigError(
                f"[target] temperature: expected a number > 0 (K), got {temperature!r}"
            )
        self.temperature = float(temperature)

        import mdtraj
        from openmm import unit

        from coarseflow.forcefield import build_system, forcefield_from_system

        topology, positions, system = build_system(self.pdb_path, self.forcefield)
        self.topology, self.system = topology, system
        self.mdtraj_topology = mdtraj.Topology.from_openmm(topology)
        self.masses = np.array(
            [
                system.getParticleMass(i).value_in_unit(unit.dalton)
                for i in range(system.getNumParticles())
            ]
        )
        self.forcefield_jax = forcefield_from_system(system)
        self.phi_atoms, self.psi_atoms = phi_psi_indices(self.mdtraj_topology)
        self.omega_atoms, self.chiral_atoms = _omega_and_chiral_indices(self.mdtraj_topology)
        self.positions, self.minimized_energy = openmm_minimise(system, positions, 1000)
        self.chirality = np.sign(_chiral_volumes(self.positions, self.chiral_atoms))

    def observe(self, positions):
        """positions (..., n_atoms, 3) nm -> {"phi": (..., m), "psi": (..., m) rad, "rg": (...)
        nm, "cis": (...) bool, any peptide bond cis (|omega| < 90 deg), "inverted": (...) bool,
        any C-alpha with the opposite chirality of the minimised structure}."""
        xp = jnp if isinstance(positions, jax.Array) else np
        omega = dihedral(positions, self.omega_atoms)
        volumes = _chiral_volumes(positions, self.chiral_atoms)
        return {
            "phi": dihedral(positions, self.phi_atoms),
            "psi": dihedral(positions, self.psi_atoms),
            "rg": radius_of_gyration(positions),
            "cis": xp.any(xp.abs(omega) < 0.5 * np.pi, axis=-1),
            "inverted": xp.any(volumes * self.chirality < 0, axis=-1),
        }


def _omega_and_chiral_indices(topology) -> tuple[np.ndarray, np.ndarray]:
    """(omega (k, 4), chiral (c, 4)) atom indices of an mdtraj Topology.

    omega: every peptide bond C_i - N_{i+1} within a chain, as (CA_i or CH3 of ACE, C_i,
    N_{i+1}, CA_{i+1} or C of NME). chiral: (CA, N, C, CB) of every residue with those atoms.
    """
    omega, chiral = [], []
    for chain in topology.chains:
        names = [{a.name: a.index for a in r.atoms} for r in chain.residues]
        for cur, nxt in zip(names[:-1], names[1:], strict=True):
            first = cur.get("CA", cur.get("CH3"))
            last = nxt.get("CA", nxt.get("C"))
            if "C" in cur and "N" in nxt and first is not None and last is not None:
                omega.append((first, cur["C"], nxt["N"], last))
        for res in names:
            if all(k in res for k in ("CA", "N", "C", "CB")):
                chiral.append((res["CA"], res["N"], res["C"], res["CB"]))
    return np.asarray(omega, np.int64).reshape(-1, 4), np.asarray(chiral, np.int64).reshape(-1, 4)


def _chiral_volumes(positions, atoms: np.ndarray):
    """Signed volumes (..., c) (N - CA) . ((C - CA) x (CB - CA)) in nm^3; sign = handedness."""
    xp = jnp if isinstance(positions, jax.Array) else np
    centre = positions[..., atoms[:, 0], :]
    a, b, c = (positions[..., atoms[:, k], :] - centre for k in (1, 2, 3))
    return xp.sum(a * xp.cross(b, c), axis=-1)
