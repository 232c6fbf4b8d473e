"""What a Molecule coarse-grains, in words (``coarseflow inspect``): the X (coarse-grained) and
Y (fast) atoms, the gauge frame's fixed atoms, the backbone dihedrals X holds and those it does
not (with the atoms it lacks), the flow's coordinates, and the torsions of the fast atoms that
make p(Y|X) multimodal (``rotamers``)."""

from __future__ import annotations

from coarseflow.targets.molecule import rotamers
from coarseflow.targets.molecule.selection import atom_label, backbone_dihedrals


def _by_residue(topology, atoms) -> list[str]:
    """'ALA2: N CA C' per residue, in chain order."""
    groups: dict[str, list[str]] = {}
    for i in atoms:
        atom = topology.atom(int(i))
        groups.setdefault(str(atom.residue), []).append(atom.name)
    return [f"{residue}: {' '.join(names)}" for residue, names in groups.items()]


def describe(molecule) -> str:
    """Lines about a :class:`~coarseflow.targets.molecule.Molecule`, before any training."""
    top = molecule.topology
    cg, fast = molecule.cg_atoms, molecule.fast_atoms
    n_x, n_y = molecule.partition.n_x, molecule.partition.n_y
    flow = (
        "the flow works in their bond lengths, angles and dihedrals (a Z-matrix)"
        if molecule.x_bijection() is not None
        else "the flow works in a Cartesian box: the CG atoms are not bonded in one tree"
    )
    lines = [
        f"molecule: {molecule.pdb_path} ({molecule.n_atoms} atoms, {top.n_residues} residues, "
        f"{molecule.temperature:g} K)",
        f"cg_selection: {molecule.cg_selection}",
        f"X, coarse-grained: {len(cg)} atoms, {n_x} coordinates; {flow}",
        *(f"  {line}" for line in _by_residue(top, cg)),
        "fixed atoms (gauge frame a, b, c; 6 coordinates held at 0): "
        + ", ".join(f"{atom_label(top, i)} ({i})" for i in molecule.fixed_atoms),
        f"Y, fast: {len(fast)} atoms, {n_y} coordinates",
        *(f"  {line}" for line in _by_residue(top, fast)),
    ]
    dihedrals = backbone_dihedrals(top, cg)
    held = [d for d in dihedrals if not d.missing]
    lacking = [d for d in dihedrals if d.missing]
    if not dihedrals:
        lines.append("CG dihedrals: none (no residue has a backbone phi and psi)")
    else:
        lines.append(f"CG dihedrals (functions of X): {len(held)} of {len(dihedrals)} phi / psi")
    for d in held:
        lines.append(f"  {d.name:12s} {' - '.join(atom_label(top, i) for i in d.atoms)}")
    for d in lacking:
        lines.append(
            f"  not in X: {d.name} lacks {', '.join(atom_label(top, i) for i in d.missing)}"
        )
    lines += rotamers.describe_lines(top, rotamers.of_molecule(molecule))
    return "\n".join(lines)
