"""Peptides from a sequence: `coarseflow build`, [target] sequence, and their errors."""

import importlib.resources

import numpy as np
import pytest

pytest.importorskip("openmm")
pytest.importorskip("PeptideBuilder")
mdtraj = pytest.importorskip("mdtraj")

from coarseflow.cli import main  # noqa: E402
from coarseflow.config import parse_config  # noqa: E402
from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.forcefield import build_system  # noqa: E402
from coarseflow.targets.molecule import Molecule, peptide  # noqa: E402

SHIPPED = importlib.resources.files("coarseflow").joinpath("data", "alanine_dipeptide.pdb")
ALA3 = ("ACE", "ALA", "ALA", "ALA", "NME")


@pytest.fixture(autouse=True)
def peptide_cache(tmp_path, monkeypatch):
    """Built peptides go to the test's own folder, not ~/.cache."""
    monkeypatch.setenv(peptide.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _residues_and_bonds(path):
    """[(resname, sorted atom names)] and the set of bonds as (residue, atom) name pairs."""
    top = mdtraj.load_topology(str(path))
    residues = [(r.name, sorted(a.name for a in r.atoms)) for r in top.residues]
    bonds = {
        frozenset(((a.residue.index, a.name), (b.residue.index, b.name))) for a, b in top.bonds
    }
    return residues, bonds, top.n_atoms


def test_dipeptide_has_the_atoms_and_bonds_of_the_shipped_one(tmp_path):
    path, energy = peptide.peptide_pdb(tmp_path / "ala2.pdb", peptide.parse_sequence("A"))
    built, shipped = _residues_and_bonds(path), _residues_and_bonds(SHIPPED)
    assert built[2] == shipped[2] == 22
    assert built[0] == shipped[0]  # the same residues with the same atom names
    assert built[1] == shipped[1]  # the same bonds between them
    # an extended start, minimised: within 2 kJ/mol of the shipped alpha_R minimum (-134.3)
    assert -136.0 < energy < -130.0


def test_ala3_is_minimised_and_makes_a_molecule(tmp_path):
    path, energy = peptide.peptide_pdb(tmp_path / "ala3.pdb", ALA3)
    assert np.isfinite(energy) and energy < -100.0  # measured -111 kJ/mol (OBC, extended)
    traj = mdtraj.load(str(path))
    omega = np.degrees(mdtraj.compute_omega(traj)[1])
    assert np.all(np.abs(omega) > 160.0)  # trans peptide bonds
    m = Molecule(pdb=str(path))  # the default force field accepts it
    assert m.n_atoms == 42 and m.residue_labels == ["ALA2", "ALA3", "ALA4"]
    assert len(m.cg_atoms) == 11 and m.partition.n_x == 3 * 11 - 6
    assert m.x_bijection() is not None  # the CG atoms are one bonded chain
    # the file's energy is the minimiser's (PDB coordinates are rounded to 1e-4 nm)
    assert float(m.energy(m.reference_x)) * m.kT == pytest.approx(energy, abs=1.0)


def test_one_letter_and_three_letter_give_the_same_structure():
    assert peptide.parse_sequence("AAA") == ALA3
    assert peptide.parse_sequence(" ace-Ala-ALA-ala-nme ") == ALA3
    assert peptide.parse_sequence("GS", caps=False) == ("GLY", "SER")
    _, a, e_a = peptide.build_peptide(peptide.parse_sequence("AAA"))
    _, b, e_b = peptide.build_peptide(ALA3)
    np.testing.assert_array_equal(a, b)  # the Reference platform: the same numbers
    assert e_a == e_b


def test_a_sequence_in_the_config_is_built_once_into_the_cache(peptide_cache):
    first = Molecule(sequence="A")
    files = list(peptide_cache.glob("*.pdb"))
    assert len(files) == 1 and files[0].name.startswith("ACE-ALA-NME-")
    assert first.pdb_path == str(files[0])
    again = Molecule(sequence="ACE-ALA-NME")  # the same residues: the same file, equal targets
    assert again.info == first.info and len(list(peptide_cache.glob("*.pdb"))) == 1
    assert first.cg_selection == (
        "(resid 0 and name C) or (resid 1 and name N CA C) or (resid 2 and name N)"
    )


def test_charged_termini_without_caps(tmp_path):
    residues = peptide.parse_sequence("AAA", caps=False)
    path, energy = peptide.peptide_pdb(tmp_path / "aaa.pdb", residues)
    top = mdtraj.load_topology(str(path))
    assert top.n_atoms == 33 and np.isfinite(energy)
    first, last = list(top.residues)[0], list(top.residues)[-1]
    assert {"H", "H2", "H3"} <= {a.name for a in first.atoms}  # NH3+
    assert "OXT" in {a.name for a in last.atoms}  # COO-
    build_system(path)


@pytest.mark.parametrize(
    "sequence, caps, message",
    [
        ("ACE-ALX-NME", True, "unknown residue 'ALX' \\(residue 2\\)"),
        ("AXA", True, "unknown residue letter 'X' \\(position 2\\)"),
        ("ALA-ACE", True, "cap ACE at residue 2; ACE may only be the first"),
        ("ACE-NME", True, "no amino acid between the caps"),
        ("", True, "expected a peptide sequence"),
        ("ACE-ALA-NME", False, "caps are written out in the three-letter form"),
        ("A" * 101, True, "101 amino acids; at most 100"),
    ],
)
def test_bad_sequences_are_named(sequence, caps, message):
    with pytest.raises(ConfigError, match=message):
        peptide.parse_sequence(sequence, caps=caps)


def test_config_with_a_sequence_and_its_errors():
    table = {"kind": "molecule", "sequence": "ACE-ALA-NME"}
    with pytest.raises(ConfigError, match=r"^\[target\] pdb and sequence: give one"):
        parse_config({"target": {**table, "pdb": "alanine_dipeptide"}})
    with pytest.raises(ConfigError, match=r"^\[target\] sequence 'ACE-XYZ-NME': unknown residue"):
        parse_config({"target": {**table, "sequence": "ACE-XYZ-NME"}})
    with pytest.raises(ConfigError, match=r"^\[target\] sequence: expected a string"):
        parse_config({"target": {**table, "sequence": 3}})


def test_cli_build(tmp_path, capsys):
    out = tmp_path / "ala2.pdb"
    assert main(["build", "ACE-ALA-NME", "-o", str(out)]) == 0
    assert "wrote ACE-ALA-NME to" in capsys.readouterr().out
    assert mdtraj.load_topology(str(out)).n_atoms == 22
    assert main(["build", "AZ", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("coarseflow: error: SEQUENCE 'AZ': unknown residue letter 'Z'")
    assert "\n" not in err
    assert main(["build", "AA", "-o", str(tmp_path / "x.txt")]) == 2
    assert "expected a file name ending in .pdb" in capsys.readouterr().err


def test_reference_reads_the_same_sequence(peptide_cache):
    from coarseflow.reference.molecule import ReferenceMolecule

    ref = ReferenceMolecule({"kind": "molecule", "sequence": "ACE-ALA-NME"})
    assert ref.pdb_path.parent == peptide_cache and ref.pdb_path.name.startswith("ACE-ALA-NME-")
    assert ref.phi_atoms.shape == (1, 4) and np.isfinite(ref.minimized_energy)
