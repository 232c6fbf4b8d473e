"""What OpenMM's CHARMM36 files need from a structure, and what their System needs from us.

**Caps are patches.** A PDB file (and ``coarseflow build``) writes the caps as residues of their
own, ACE and NME, as Amber's files expect. CHARMM36 (``charmm36.xml``, ``charmm36_2024.xml``)
has no ACE or NME residue: its ACE and CT3 patches add the acetyl and N-methylamide atoms to the
first and last amino acid. OpenMM matches residues to templates by their atoms' elements and
bonds, not their names, so :func:`caps_merged` hands it a copy of the topology in which each ACE
is part of the residue after it and each NME part of the residue before it, with the atoms in
the same order (the System's particles are the file's atoms). A capped alanine is then ambiguous
in charmm36.xml, which carries CHARMM's alanine-dipeptide model compound twice: ALAD (protein
atom types, the ALA template with the ACE and CT3 patches, identical parameters) and AANM
(CGenFF types); ALAD is named for it.

**Urey-Bradley terms are not bonds.** OpenMM adds CHARMM's 1-3 Urey-Bradley terms to the
HarmonicBondForce, whose pairs a Molecule reads as its bond graph. :func:`split_urey_bradley`
moves every pair that is not a bond of the topology into a CustomBondForce ``0.5*k*(r-r0)^2``
named "UreyBradley" with the same parameters: the same energy, and a HarmonicBondForce of bonds.
"""

from __future__ import annotations

CAPS = {"ACE": 1, "NME": -1}  # the cap's residue -> the neighbour (+1 after, -1 before) it joins
DIPEPTIDE_TEMPLATES = {"ALA": "ALAD"}  # a capped residue whose patched template is ambiguous
UREY_BRADLEY = "0.5*k*(r-r0)^2"


def has_caps(topology) -> bool:
    """Whether an OpenMM Topology has an ACE or NME residue."""
    return any(residue.name in CAPS for residue in topology.residues())


def caps_merged(topology):
    """(a copy of the OpenMM ``topology`` with each ACE / NME cap part of its neighbouring
    residue in the same chain, atoms in the same order; ``residueTemplates`` for
    ``ForceField.createSystem``: the names of :data:`DIPEPTIDE_TEMPLATES` for a residue capped
    at both ends)."""
    from openmm import app

    merged = app.Topology()
    merged.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    atoms, templates = {}, {}
    for chain in topology.chains():
        residues = list(chain.residues())
        home = []  # the index of the residue each residue's atoms go to
        for n, residue in enumerate(residues):
            step = CAPS.get(residue.name, 0)
            target = n + step
            if step and 0 <= target < len(residues) and residues[target].name not in CAPS:
                home.append(target)
            else:
                home.append(n)
        new_chain = merged.addChain(chain.id)
        made = {}
        for n, residue in enumerate(residues):
            owner = residues[home[n]]
            if home[n] not in made:
                made[home[n]] = merged.addResidue(owner.name, new_chain, owner.id)
            for atom in residue.atoms():
                atoms[atom] = merged.addAtom(atom.name, atom.element, made[home[n]], atom.id)
        for n, new in made.items():
            joined = {residues[m].name for m, h in enumerate(home) if h == n and m != n}
            name = DIPEPTIDE_TEMPLATES.get(residues[n].name)
            if name is not None and joined == set(CAPS):
                templates[new] = name
    for bond in topology.bonds():
        merged.addBond(atoms[bond[0]], atoms[bond[1]], bond.type, bond.order)
    if [a.index for a in merged.atoms()] != [atoms[a].index for a in topology.atoms()]:
        raise AssertionError("caps_merged changed the atom order")  # a bug, never user input
    return merged, templates


def create_system(forcefield, topology):
    """``forcefield.createSystem`` with no cutoff, no constraints and flexible water; if it fails
    on a topology with caps, again on :func:`caps_merged` (CHARMM36's caps are patches), and
    if that fails too, the first error is raised. Urey-Bradley terms are then split off the
    bonds (:func:`split_urey_bradley`)."""
    from openmm import app

    def create(top, templates):
        return forcefield.createSystem(
            top,
            nonbondedMethod=app.NoCutoff,
            constraints=None,
            rigidWater=False,
            residueTemplates=templates,
        )

    try:
        system = create(topology, {})
    except Exception as first:  # OpenMM raises ValueError or a bare Exception
        if not has_caps(topology):
            raise
        try:
            system = create(*caps_merged(topology))
        except Exception:
            raise first from None
    split_urey_bradley(system, topology)
    return system


def split_urey_bradley(system, topology) -> int:
    """Move the HarmonicBondForce terms whose atoms are not bonded in ``topology`` (CHARMM's
    Urey-Bradley 1-3 terms) into a CustomBondForce ``0.5*k*(r-r0)^2`` named "UreyBradley", in
    place; returns how many were moved (0: the System is left as it was)."""
    import openmm
    from openmm import unit

    bonded = {frozenset((a.index, b.index)) for a, b in topology.bonds()}
    for index, force in enumerate(system.getForces()):
        if not isinstance(force, openmm.HarmonicBondForce):
            continue
        terms = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        extra = [t for t in terms if frozenset(t[:2]) not in bonded]
        if not extra:
            continue
        bonds = openmm.HarmonicBondForce()
        bonds.setName(force.getName())
        bonds.setForceGroup(force.getForceGroup())
        bonds.setUsesPeriodicBoundaryConditions(force.usesPeriodicBoundaryConditions())
        for i, j, length, k in terms:
            if frozenset((i, j)) in bonded:
                bonds.addBond(i, j, length, k)
        urey_bradley = openmm.CustomBondForce(UREY_BRADLEY)
        urey_bradley.setName("UreyBradley")
        urey_bradley.setForceGroup(force.getForceGroup())
        urey_bradley.addPerBondParameter("k")
        urey_bradley.addPerBondParameter("r0")
        for i, j, length, k in extra:
            k = k.value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2)
            urey_bradley.addBond(i, j, [k, length.value_in_unit(unit.nanometer)])
        system.removeForce(index)
        system.addForce(bonds)
        system.addForce(urey_bradley)
        return len(extra)
    return 0
