"""What a Molecule is built from: its ``[target]`` table (the arguments of ``Molecule``) checked
and read into the Molecule's fields, once, at construction.

The structure is read (a PDB, a built-in name, a prmtop or a sequence built into a peptide) and
its System built in the force field; the CG atoms are selected and checked (cg_dihedrals, the
gauge atoms); the gauge frame, the CG atoms' Z-matrix with its dihedral seams and the fast
atoms' placements are made; the static record (MoleculeInfo) holds the rest.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import mdtraj
import numpy as np
from jaxtyping import Array, Float

from coarseflow import checks
from coarseflow.errors import ConfigError
from coarseflow.forcefield import ForceField, build_system, forcefield_from_system
from coarseflow.model.internal import AtomPlacements, ZMatrix
from coarseflow.partition import Partition
from coarseflow.targets.molecule import io, registry, selection, topology, zmatrix
from coarseflow.targets.molecule.gauge import GaugeFrame, align_to_gauge
from coarseflow.units import MOLAR_GAS_CONSTANT


class MoleculeParts(NamedTuple):
    """The fields of a Molecule (see :class:`coarseflow.targets.molecule.target.Molecule`), as
    :func:`molecule_parts` builds them."""

    partition: Partition
    forcefield: ForceField
    reference_x: Float[Array, " n"]
    masses: Float[Array, " n_atoms"]
    gauge: GaugeFrame
    zmatrix: ZMatrix | None
    y_placements: AtomPlacements | None
    temperature: float
    kT: float
    box_margin: float
    info: topology.MoleculeInfo


def molecule_parts(
    pdb: str | None,
    forcefield: tuple[str, ...] | None,
    temperature: float,
    cg_selection: str | None,
    sequence: str | None,
    cg_dihedrals: tuple[str, ...] | None,
    fixed_atoms: tuple[int, ...] | None,
    box_margin: float,
    reference: str | None,
) -> MoleculeParts:
    """The fields of ``Molecule(pdb, forcefield, temperature, ...)`` (the same arguments; see
    ``Molecule.__init__``), every argument checked (ConfigError naming its [target] key)."""
    # a temperature past 1e5 K or a box wider than 10 nm is a typo, not a molecule
    checks.number("[target] temperature", temperature, 0.0, 1e5)
    checks.number("[target] box_margin", box_margin, 0.0, 10.0)
    forcefield = registry.forcefield_files(forcefield)
    path, builtin_selection = registry.resolve_structure(pdb, sequence, forcefield)

    _, positions, system = build_system(path, forcefield)
    try:
        top = mdtraj.load_topology(path)
    except Exception as err:
        raise ConfigError(f"[target] pdb '{pdb}': mdtraj cannot read it ({err})") from None
    if cg_selection is None:
        cg_selection = (
            builtin_selection
            or selection.default_cg_selection(top, cg_dihedrals)
            or registry.DEFAULT_SELECTION
        )
    n_atoms = int(positions.shape[0])
    if top.n_atoms != n_atoms:
        raise ConfigError(
            f"[target] pdb '{pdb}': OpenMM reads {n_atoms} atoms, mdtraj {top.n_atoms}"
        )
    cg = topology.select_cg_atoms(top, cg_selection, n_atoms)
    selection.check_cg_dihedrals(top, cg, cg_dihedrals, cg_selection)
    hops = topology.bond_hops(system, n_atoms)
    if fixed_atoms is None:
        fixed = topology.auto_fixed_atoms(cg, positions, hops)
    else:
        fixed = topology.check_fixed_atoms(fixed_atoms, cg, positions)

    ref_gauge = align_to_gauge(positions, *fixed)  # NumPy float64
    gauge = GaugeFrame(ref_gauge, fixed, cg, hops)
    free = np.asarray(gauge.free_indices)
    x_idx = np.flatnonzero(np.isin(free, gauge.x_flat))
    fast = np.asarray(gauge.fast_atoms, dtype=np.int64)
    from openmm import unit

    partition = Partition.from_x(int(free.size), x_idx.tolist())
    energy = forcefield_from_system(system)
    reference_x = jnp.asarray(ref_gauge.reshape(-1)[free], dtype=float)
    masses = jnp.asarray(
        [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)],
        dtype=float,
    )
    kT = MOLAR_GAS_CONSTANT * float(temperature)

    # the CG atoms' Z-matrix (the flow's coordinates), its dihedral seams placed once here
    zm = zmatrix.cg_zmatrix(hops, cg, fixed, ref_gauge, gauge.x_flat)
    if zm is not None:
        X_ref, _ = partition.split(reference_x)
        seams = zmatrix.dihedral_seams(
            zm,
            X_ref,
            lambda q: zmatrix.grafted_energies(energy, gauge, partition, kT, zm, jnp.asarray(q)),
        )
        zm = zmatrix.with_seams(zm, seams)
    rotors = topology.equivalent_rotors(energy, hops, fast, ref_gauge)
    y_placements = zmatrix.fast_placements(hops, cg, fast, ref_gauge, rotors)
    n_residues = len(topology.phi_psi_indices(top)[0])
    info = topology.MoleculeInfo.build(
        topology=top,
        pdb_path=path,
        cg_selection=cg_selection,
        cg=cg,
        rotors=rotors,
        reference_positions=ref_gauge,
        reference_path=reference,
        reference=None if reference is None else io.load_reference(reference, n_residues),
    )
    return MoleculeParts(
        partition=partition,
        forcefield=energy,
        reference_x=reference_x,
        masses=masses,
        gauge=gauge,
        zmatrix=zm,
        y_placements=y_placements,
        temperature=float(temperature),
        kT=kT,
        box_margin=float(box_margin),
        info=info,
    )
