"""A peptide from its sequence: an all-atom structure with hydrogens, minimised, as a PDB file.

Who builds what (no geometry is written here, and nothing is downloaded):

* **Heavy atoms: PeptideBuilder** (PyPI; Tien et al., PeerJ 2013; built on Biopython's Bio.PDB).
  It places every heavy atom of the 20 standard amino acids from Engh & Huber bond lengths and
  angles at given backbone dihedrals: trans peptide bonds, L-chirality, its default extended
  start (phi, psi) = (-120, 140) deg. It has no caps, so an ACE or NME cap is built as a glycine
  whose backbone atoms are the cap's (ACE: CA -> CH3, C, O; NME: N, CA -> C): the caps get the
  same peptide-bond geometry as every other residue.
* **Hydrogens: OpenMM's Modeller.addHydrogens** with the force field that will be used, so the
  names and protonation states (pH 7: NH3+ / COO- termini without caps; histidine by its
  hydrogen bonds) are those of its templates. CHARMM36 has no ACE / NME residues (its caps
  are patches, ``forcefield.charmm``): there the hydrogens come from OpenMM's standard
  hydrogen definitions (PDB names) and the caps join their neighbours only for the System.
* **Minimisation: OpenMM's LocalEnergyMinimizer** (Reference platform: the same file on every
  machine) in that force field with no cutoff and no constraints, as the Molecule uses it.

pdbfixer was considered: it completes structures from a PDB file (missing atoms, loops on an arc)
but does not build a chain from nothing. Sequences: three-letter codes separated by dashes
(``ACE-ALA-ALA-NME``, exactly the residues written) or one-letter codes without dashes (``AAA``,
capped with ACE / NME unless ``caps=False``). ``[target] sequence`` builds through
:func:`cached_peptide`, which keeps one file per (residues, force field) in a cache directory.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from coarseflow.errors import ConfigError

ONE_TO_THREE = {
    "A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS",
    "I": "ILE", "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN",
    "R": "ARG", "S": "SER", "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR",
}  # fmt: skip
"""The 20 amino acids PeptideBuilder builds, one-letter -> three-letter code."""
THREE_TO_ONE = {three: one for one, three in ONE_TO_THREE.items()}
CAPS = ("ACE", "NME")  # N-terminal acetyl, C-terminal N-methyl amide
MAX_RESIDUES = 100  # a longer chain is not a peptide this library can coarse-grain in one go

BUILD_VERSION = 1  # part of the cache key: raise it when the building changes
HYDROGEN_SEED = 20240229  # addHydrogens starts some hydrogens at random(): the same file each time
MINIMIZE_TOLERANCE = 1.0  # kJ/mol/nm, OpenMM's LocalEnergyMinimizer (as the shipped dipeptide)
CACHE_ENV = "COARSEFLOW_PEPTIDE_CACHE"


def parse_sequence(sequence, *, caps: bool = True, where: str = "sequence") -> tuple[str, ...]:
    """Residue names (three-letter, chain order) of a sequence; ConfigError names a bad one.

    ``sequence``: three-letter codes joined by dashes (case-insensitive; ACE only first, NME
    only last; taken literally, so no caps means charged termini) or one-letter codes of the
    20 amino acids without dashes, capped with ACE / NME when ``caps``. ``where`` starts the
    error message (the config key or the command's argument).
    """
    if not isinstance(sequence, str) or not sequence.strip():
        raise ConfigError(
            f"{where}: expected a peptide sequence such as 'ACE-ALA-ALA-NME' or 'AAA', "
            f"got {sequence!r}"
        )
    text = sequence.strip().upper()
    if "-" in text:
        if not caps:
            raise ConfigError(
                f"{where} '{sequence}': caps are written out in the three-letter form; "
                "leave out ACE / NME instead of asking for no caps"
            )
        names = tuple(part.strip() for part in text.split("-"))
        for i, name in enumerate(names):
            if name not in THREE_TO_ONE and name not in CAPS:
                raise ConfigError(
                    f"{where} '{sequence}': unknown residue {name!r} (residue {i + 1}); expected "
                    "three-letter codes of the 20 amino acids ("
                    + ", ".join(sorted(THREE_TO_ONE))
                    + ") with an optional ACE first and NME last"
                )
        misplaced = [
            (i, n)
            for i, n in enumerate(names)
            if (n == "ACE" and i != 0) or (n == "NME" and i != len(names) - 1)
        ]
        if misplaced:
            i, name = misplaced[0]
            raise ConfigError(
                f"{where} '{sequence}': cap {name} at residue {i + 1}; ACE may only be "
                "the first residue and NME only the last"
            )
    else:
        for i, letter in enumerate(text):
            if letter not in ONE_TO_THREE:
                raise ConfigError(
                    f"{where} '{sequence}': unknown residue letter {letter!r} (position "
                    f"{i + 1}); expected one-letter codes {''.join(sorted(ONE_TO_THREE))}, or "
                    "three-letter codes joined by dashes (ACE-ALA-NME)"
                )
        body = tuple(ONE_TO_THREE[letter] for letter in text)
        names = ("ACE", *body, "NME") if caps else body
    amino = [n for n in names if n not in CAPS]
    if not amino:
        raise ConfigError(f"{where} '{sequence}': no amino acid between the caps")
    if len(amino) > MAX_RESIDUES:
        raise ConfigError(f"{where}: {len(amino)} amino acids; at most {MAX_RESIDUES} are built")
    return names


def _heavy_atoms(residues: tuple[str, ...]):
    """[(residue name, [(atom name, element symbol, xyz in nm)])] of PeptideBuilder's chain."""
    import PeptideBuilder
    from PeptideBuilder import Geometry

    # caps are glycines whose backbone atoms are renamed; the rest is PeptideBuilder's output
    letters = "".join("G" if name in CAPS else THREE_TO_ONE[name] for name in residues)
    structure = PeptideBuilder.make_structure_from_geos([Geometry.geometry(a) for a in letters])
    if residues[-1] != "NME":
        PeptideBuilder.add_terminal_OXT(structure)  # the carboxylate's second oxygen
    keep = {"ACE": {"CA": "CH3", "C": "C", "O": "O"}, "NME": {"N": "N", "CA": "C"}}
    out = []
    for name, residue in zip(residues, structure[0]["A"], strict=True):
        rename = keep.get(name)
        atoms = [
            (rename[a.get_id()] if rename else a.get_id(), a.element, a.coord / 10.0)
            for a in residue
            if rename is None or a.get_id() in rename
        ]
        out.append((name, atoms))
    return out


def build_peptide(residues: tuple[str, ...], forcefield_files: tuple[str, ...] | None = None):
    """The minimised all-atom structure of ``residues`` (from :func:`parse_sequence`).

    forcefield_files: OpenMM force-field XML files (default
    ``coarseflow.forcefield.DEFAULT_FORCEFIELD_FILES``); its templates name the hydrogens and
    its energy is minimised. Returns (openmm.app.Topology, positions (n_atoms, 3) float64 nm,
    potential energy kJ/mol after minimisation). ConfigError when the force field cannot load
    or has no template for a residue.
    """
    import openmm
    from openmm import app, unit

    from coarseflow.forcefield.build import DEFAULT_FORCEFIELD_FILES
    from coarseflow.forcefield.charmm import create_system
    from coarseflow.forcefield.trust import check_forcefield_files

    files = DEFAULT_FORCEFIELD_FILES if forcefield_files is None else tuple(forcefield_files)
    check_forcefield_files(files)
    try:
        forcefield = app.ForceField(*files)
    except Exception as err:  # ValueError / OSError for a missing file, XML errors otherwise
        raise ConfigError(
            f"force field: cannot load force-field files {list(files)}: {err}"
        ) from None

    topology = app.Topology()
    chain = topology.addChain("A")
    positions = []
    for number, (name, atoms) in enumerate(_heavy_atoms(residues), start=1):
        residue = topology.addResidue(name, chain, str(number))
        for atom_name, symbol, xyz in atoms:
            topology.addAtom(atom_name, app.Element.getBySymbol(symbol), residue)
            positions.append(openmm.Vec3(*(float(v) for v in xyz)))
    topology.createStandardBonds()  # residues.xml knows the 20 amino acids, ACE and NME
    reference = openmm.Platform.getPlatformByName("Reference")
    state = random.getstate()  # seeded for addHydrogens alone, the caller's stream restored
    try:
        modeller = _with_hydrogens(topology, positions, forcefield, reference)
        system = create_system(forcefield, modeller.topology)
    except Exception as err:  # no template for a residue: ValueError or a bare Exception
        raise ConfigError(
            f"force field {list(files)}: cannot parametrise the peptide: {err}"
        ) from None
    finally:
        random.setstate(state)
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, reference)
    context.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(context, MINIMIZE_TOLERANCE, 0)
    state = context.getState(getPositions=True, getEnergy=True)
    xyz = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), np.float64)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return modeller.topology, xyz, float(energy)


def _with_hydrogens(topology, positions, forcefield, platform):
    """A Modeller of the chain with hydrogens: placed with the force field's templates, or, for
    a force field whose caps are patches (CHARMM36: ACE / NME are no residues of its own, see
    ``forcefield.charmm``), from OpenMM's hydrogen definitions alone (the minimisation in the
    force field then places them)."""
    from openmm import app, unit

    from coarseflow.forcefield.charmm import has_caps

    random.seed(HYDROGEN_SEED)
    modeller = app.Modeller(topology, positions * unit.nanometer)
    try:
        modeller.addHydrogens(forcefield, pH=7.0, platform=platform)
    except Exception:
        if not has_caps(topology):
            raise
        random.seed(HYDROGEN_SEED)
        modeller = app.Modeller(topology, positions * unit.nanometer)
        modeller.addHydrogens(None, pH=7.0, platform=platform)
    return modeller


def write_pdb(path, topology, positions: np.ndarray, remarks: list[str]) -> Path:
    """Write ``positions`` (n_atoms, 3) nm as a PDB file with REMARK lines, atomically (a
    temporary file renamed: a reader never sees half a file, two writers leave one whole)."""
    from openmm import app, unit

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for line in remarks:
                f.write(f"REMARK   1 {line.upper()}\n")
            app.PDBFile.writeFile(topology, positions * unit.nanometer, f, keepIds=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def peptide_pdb(path, residues: tuple[str, ...], forcefield_files=None) -> tuple[Path, float]:
    """Build ``residues`` and write it to ``path``; (path, minimised energy kJ/mol)."""
    from coarseflow.forcefield.build import DEFAULT_FORCEFIELD_FILES

    topology, positions, energy = build_peptide(residues, forcefield_files)
    files = DEFAULT_FORCEFIELD_FILES if forcefield_files is None else tuple(forcefield_files)
    remarks = [
        f"{'-'.join(residues)} BUILT BY COARSEFLOW WITHOUT DOWNLOADS:",
        "HEAVY ATOMS BY PEPTIDEBUILDER (CAPS AS RENAMED GLYCINES), HYDROGENS BY",
        "OPENMM MODELLER.ADDHYDROGENS (PH 7), MINIMISED WITH OPENMM",
        f"LOCALENERGYMINIMIZER UNDER {' + '.join(files)}, NO CUTOFF:",
        f"ENERGY {energy:.2f} KJ/MOL",
    ]
    return write_pdb(path, topology, positions, remarks), energy


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def cache_dir() -> Path:
    """Where built peptides are kept: $COARSEFLOW_PEPTIDE_CACHE, default
    ~/.cache/coarseflow/peptides."""
    default = Path.home() / ".cache" / "coarseflow" / "peptides"
    return Path(os.environ.get(CACHE_ENV) or default)


def cached_peptide(residues: tuple[str, ...], forcefield_files=None) -> str:
    """The path of the built structure of ``residues`` in :func:`cache_dir`, built if absent.

    The file's name carries a hash of everything the structure depends on (the residues, the
    force-field files' names and, for files on disk, their contents, BUILD_VERSION and the
    versions of OpenMM and PeptideBuilder), so the same inputs give the same path: a Molecule
    rebuilt from the same [target] compares equal, and a run reloads its own structure.
    """
    key = hashlib.sha256()
    for part in (
        *residues,
        *(forcefield_files or ("default",)),
        str(BUILD_VERSION),
        _version("openmm"),
        _version("PeptideBuilder"),
    ):
        key.update(part.encode() + b"\0")
    for name in forcefield_files or ():
        if Path(name).is_file():
            key.update(Path(name).read_bytes())
    stem = "-".join(residues) if len(residues) <= 12 else f"{len(residues)}-residues"
    path = cache_dir() / f"{stem}-{key.hexdigest()[:16]}.pdb"
    if not path.is_file():
        peptide_pdb(path, residues, forcefield_files)
    return str(path)
