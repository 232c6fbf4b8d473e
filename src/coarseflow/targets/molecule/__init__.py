"""A molecule as a target: PDB (or Amber prmtop) + OpenMM force field -> pure-JAX u(x).

registry     the built-in molecules, the PDB lookup, [target] sequence, the force-field files
peptide      a sequence -> a minimised all-atom PDB (PeptideBuilder + OpenMM), the cache of them
selection    a peptide's default CG atoms (every phi / psi), the cg_dihedrals check
describe     what a Molecule coarse-grains, in words (coarseflow inspect)
rotamers     the fast torsions that make p(Y|X) multimodal (inspect, the build warning)
topology     CG selection, bond graph, gauge atoms, methyl rotors, phi/psi atoms; MoleculeInfo
gauge        free coordinates <-> positions in the gauge frame; fast atoms grafted
zmatrix      the CG atoms' Z-matrix and its dihedral seams; the fast atoms' placements
io           trajectories written, reference data read
parts        a Molecule's fields from its [target] table: read, checked, built once
target       the Molecule itself
"""

from coarseflow.targets.molecule.registry import (
    ALANINE_DIPEPTIDE_SELECTION,
    BUILTIN_MOLECULES,
    DEFAULT_SELECTION,
    forcefield_files,
    resolve_pdb,
)
from coarseflow.targets.molecule.target import Molecule
from coarseflow.targets.molecule.topology import MoleculeInfo, Rotor, equivalent_rotors

__all__ = [
    "ALANINE_DIPEPTIDE_SELECTION",
    "BUILTIN_MOLECULES",
    "DEFAULT_SELECTION",
    "Molecule",
    "MoleculeInfo",
    "Rotor",
    "equivalent_rotors",
    "forcefield_files",
    "resolve_pdb",
]
