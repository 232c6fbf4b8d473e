"""Build the bundled capped peptides from internal coordinates, without any download.

How the structures are made (the PDB headers repeat this):
1. Heavy atoms are placed one by one from ideal internal coordinates (bond lengths, angles and
   dihedrals close to Engh & Huber's peptide geometry) with the natural-extension reference frame
   construction: trans peptide bonds (omega = 180 deg), backbone (phi, psi) as given below,
   L-chirality at every C-alpha (checked), serine chi1 = -65 deg.
2. Hydrogens are added by ``openmm.app.Modeller.addHydrogens`` with amber99sbildn.xml.
3. The structure is minimised with OpenMM's LocalEnergyMinimizer (Reference platform,
   amber99sbildn.xml + amber99_obc.xml, no cutoff, no constraints, 1 kJ/mol/nm tolerance).
4. It is written with ``openmm.app.PDBFile`` and checked to load with OpenMM and mdtraj.

Outputs:
* ``src/coarseflow/data/alanine_dipeptide.pdb``: ACE-ALA-NME (22 atoms), started at
  (phi, psi) = (-82, 73) deg (C7eq); in OBC implicit solvent it minimises into the
  alpha_R basin, (phi, psi) ~ (-77, -15) deg (the header records the final angles);
* ``tests/data/ace_gly_ser_nme.pdb``: ACE-GLY-SER-NME (30 atoms), a second small test molecule
  with a glycine and a polar side chain.
Running it twice gives identical files (Reference platform, seeded hydrogen placement).

Run from anywhere: ``python scripts/build_alanine_dipeptide.py``.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import mdtraj
import numpy as np
import openmm
from openmm import app, unit

ROOT = Path(__file__).resolve().parents[1]
FORCEFIELD_FILES = ("amber99sbildn.xml", "amber99_obc.xml")

# Ideal geometry, Angstrom and degrees.
BOND = {"N-CA": 1.458, "CA-C": 1.525, "C-N": 1.329, "C-O": 1.231, "CA-CB": 1.530}
BOND |= {"CH3-C": 1.520, "CB-OG": 1.417}
ANGLE = {"C-N-CA": 121.7, "N-CA-C": 111.2, "CA-C-N": 116.2, "N-C-O": 122.7}
ANGLE |= {"C-CA-CB": 110.1, "CA-CB-OG": 111.1}
OMEGA = 180.0
# N-C-CA-CB improper giving L-chirality at C-alpha (verified by check_l_chirality).
CB_IMPROPER = 122.6


def place(a, b, c, bond, angle_deg, dihedral_deg):
    """Position of d with |cd| = bond, angle b-c-d and dihedral a-b-c-d (IUPAC sign)."""
    angle, dihedral = np.radians(angle_deg), np.radians(dihedral_deg)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d = np.array(
        [-np.cos(angle), np.sin(angle) * np.cos(dihedral), np.sin(angle) * np.sin(dihedral)]
    )
    return c + bond * (d[0] * bc + d[1] * m + d[2] * n)


def dihedral(a, b, c, d):
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return np.degrees(np.arctan2(np.linalg.norm(b2) * np.dot(b1, n2), np.dot(n1, n2)))


def heavy_atoms(residues, phi_psi):
    """Heavy atoms of ACE-<residues>-NME as [(residue name, [(atom name, element, xyz)])].

    ``residues``: names among ALA, GLY, SER; ``phi_psi``: one (phi, psi) in degrees per residue.
    """
    out = []
    ch3 = np.zeros(3)
    c = np.array([BOND["CH3-C"], 0.0, 0.0])
    # A dummy atom fixes the frame of the first placement; its dihedral is arbitrary.
    n = place(np.array([0.0, 1.0, 0.0]), ch3, c, BOND["C-N"], ANGLE["CA-C-N"], 180.0)
    ace = [("CH3", "C", ch3), ("C", "C", c)]
    out.append(("ACE", ace))
    prev_ca_like, prev_c, prev_res = ch3, c, ace
    for name, (phi, psi) in zip(residues, phi_psi, strict=True):
        ca = place(prev_ca_like, prev_c, n, BOND["N-CA"], ANGLE["C-N-CA"], OMEGA)
        c = place(prev_c, n, ca, BOND["CA-C"], ANGLE["N-CA-C"], phi)
        next_n = place(n, ca, c, BOND["C-N"], ANGLE["CA-C-N"], psi)
        # Carbonyl O of the previous residue is cis to this C-alpha across the peptide bond.
        prev_res.append(("O", "O", place(ca, n, prev_c, BOND["C-O"], ANGLE["N-C-O"], 0.0)))
        atoms = [("N", "N", n), ("CA", "C", ca), ("C", "C", c)]
        if name in ("ALA", "SER"):
            cb = place(n, c, ca, BOND["CA-CB"], ANGLE["C-CA-CB"], CB_IMPROPER)
            atoms.append(("CB", "C", cb))
            if name == "SER":
                atoms.append(("OG", "O", place(n, ca, cb, BOND["CB-OG"], ANGLE["CA-CB-OG"], -65.0)))
        elif name != "GLY":
            raise ValueError(f"no internal coordinates for residue {name}")
        out.append((name, atoms))
        prev_ca_like, prev_c, prev_res, n = ca, c, atoms, next_n
    ch3_nme = place(prev_ca_like, prev_c, n, BOND["N-CA"], ANGLE["C-N-CA"], OMEGA)
    prev_res.append(("O", "O", place(ch3_nme, n, prev_c, BOND["C-O"], ANGLE["N-C-O"], 0.0)))
    out.append(("NME", [("N", "N", n), ("C", "C", ch3_nme)]))
    return out


def check_l_chirality(residues_atoms):
    """Raise unless every C-alpha with a C-beta is L: the C-alpha-N-C-C-beta virtual
    torsion (zeta) is about +34 deg for L-amino acids and -34 deg for D."""
    for name, atoms in residues_atoms:
        xyz = {a: x for a, _, x in atoms}
        if "CB" in xyz:
            zeta = dihedral(xyz["CA"], xyz["N"], xyz["C"], xyz["CB"])
            if not 20.0 < zeta < 50.0:
                raise RuntimeError(f"{name}: zeta = {zeta:.1f} deg, not an L-amino acid")


def to_openmm(residues_atoms):
    topology = app.Topology()
    chain = topology.addChain("A")
    positions = []
    for res_name, atoms in residues_atoms:
        residue = topology.addResidue(res_name, chain)
        for atom_name, element, xyz in atoms:
            topology.addAtom(atom_name, app.Element.getBySymbol(element), residue)
            positions.append(xyz / 10.0)  # Angstrom -> nm
    topology.createStandardBonds()
    return topology, np.array(positions) * unit.nanometer


def build(residues, phi_psi, header: list[str], path: Path) -> None:
    atoms = heavy_atoms(residues, phi_psi)
    check_l_chirality(atoms)
    topology, positions = to_openmm(atoms)
    forcefield = app.ForceField(*FORCEFIELD_FILES)
    reference = openmm.Platform.getPlatformByName("Reference")
    modeller = app.Modeller(topology, positions)
    # addHydrogens starts some hydrogens at random positions before minimising them.
    random.seed(20240229)
    modeller.addHydrogens(forcefield, platform=reference)
    system = forcefield.createSystem(
        modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
    )
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, reference)
    context.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
    state = context.getState(getPositions=True, getEnergy=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    minimised = mdtraj.Trajectory(
        state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)[None],
        mdtraj.Topology.from_openmm(modeller.topology),
    )
    phi = np.degrees(mdtraj.compute_phi(minimised)[1][0])
    psi = np.degrees(mdtraj.compute_psi(minimised)[1][0])
    angles = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(phi, psi, strict=True))

    buffer = io.StringIO()
    app.PDBFile.writeFile(modeller.topology, state.getPositions(), buffer, keepIds=False)
    remarks = [f"REMARK   1 {line}" for line in header]
    remarks.append(f"REMARK   1 MINIMISED: PHI/PSI = {angles} DEG, ENERGY {energy:.2f} KJ/MOL")
    # Drop OpenMM's own REMARK (it carries a date, which would make the file non-deterministic).
    body = [line for line in buffer.getvalue().splitlines() if not line.startswith("REMARK")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(remarks + body) + "\n")

    # The file must load with both readers and match the force-field templates.
    reread = app.PDBFile(str(path))
    forcefield.createSystem(reread.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    traj = mdtraj.load(str(path))
    if traj.n_atoms != reread.topology.getNumAtoms():
        raise RuntimeError(f"{path}: mdtraj and OpenMM read different numbers of atoms")
    print(f"{path}: {traj.n_atoms} atoms, E = {energy:.2f} kJ/mol, phi/psi = {angles} deg")


HEADER = [
    "BUILT BY coarseflow scripts/build_alanine_dipeptide.py WITHOUT DOWNLOADS:",
    "HEAVY ATOMS FROM IDEAL INTERNAL COORDINATES (TRANS PEPTIDES, L-CHIRAL),",
    "HYDROGENS ADDED WITH OPENMM MODELLER (AMBER99SBILDN), MINIMISED WITH",
    "OPENMM LOCALENERGYMINIMIZER UNDER AMBER99SBILDN + AMBER99_OBC, NO CUTOFF.",
]


def main() -> None:
    build(
        ["ALA"],
        [(-82.0, 73.0)],
        [*HEADER, "ACE-ALA-NME (ALANINE DIPEPTIDE), START PHI/PSI = -82/73 DEG (C7EQ)."],
        ROOT / "src" / "coarseflow" / "data" / "alanine_dipeptide.pdb",
    )
    build(
        ["GLY", "SER"],
        [(-75.0, 145.0), (-65.0, -40.0)],
        [*HEADER, "ACE-GLY-SER-NME TEST MOLECULE, START PHI/PSI = -75/145, -65/-40 DEG."],
        ROOT / "tests" / "data" / "ace_gly_ser_nme.pdb",
    )


if __name__ == "__main__":
    main()
