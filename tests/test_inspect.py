"""Selections that explain themselves: the default CG atoms of a peptide, `coarseflow inspect`,
and the message for a selection that leaves a requested dihedral without its atoms."""

import pytest

pytest.importorskip("openmm")
mdtraj = pytest.importorskip("mdtraj")

from coarseflow.cli import main  # noqa: E402
from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.targets.molecule import Molecule  # noqa: E402
from coarseflow.targets.molecule.describe import describe  # noqa: E402
from coarseflow.targets.molecule.selection import (  # noqa: E402
    backbone_dihedrals,
    default_cg_selection,
)

GS = "tests/data/ace_gly_ser_nme.pdb"


def test_default_selection_is_the_atoms_of_every_phi_psi():
    top = mdtraj.load_topology(GS)
    selection = default_cg_selection(top)
    assert selection == (
        "(resid 0 and name C) or (resid 1 and name N CA C) or (resid 2 and name N CA C) or "
        "(resid 3 and name N)"
    )
    wanted = sorted({i for d in backbone_dihedrals(top) for i in d.atoms})
    assert top.select(selection).tolist() == wanted and len(wanted) == 8
    assert [d.name for d in backbone_dihedrals(top)] == [
        "phi GLY2",
        "psi GLY2",
        "phi SER3",
        "psi SER3",
    ]
    water = mdtraj.Topology()
    residue = water.add_residue("HOH", water.add_chain())
    water.add_atom("O", mdtraj.element.oxygen, residue)
    assert default_cg_selection(water) is None  # not a peptide: the caller's fallback


def test_describe_names_x_y_fixed_atoms_and_dihedrals():
    m = Molecule(pdb=GS)
    text = describe(m)
    assert "X, coarse-grained: 8 atoms, 18 coordinates" in text
    assert "  GLY2: N CA C\n  SER3: N CA C\n  NME4: N\n" in text
    assert "Y, fast: 22 atoms, 66 coordinates" in text
    assert "  SER3: H HA CB HB2 HB3 OG HG O\n" in text  # the side chain is fast
    assert "fixed atoms (gauge frame a, b, c; 6 coordinates held at 0): " in text
    assert "CG dihedrals (functions of X): 4 of 4 phi / psi" in text
    assert "  phi SER3     GLY2-C - SER3-N - SER3-CA - SER3-C" in text
    assert "not in X" not in text


def test_a_selection_without_a_requested_dihedral_is_named():
    selection = "name N CA C and not resname NME"  # leaves out NME's N: psi SER3 is lost
    m = Molecule(pdb=GS, cg_selection=selection, cg_dihedrals=["psi GLY2"])  # asked: held
    assert "  not in X: psi SER3 lacks NME4-N" in describe(m)
    with pytest.raises(ConfigError) as err:
        Molecule(pdb=GS, cg_selection=selection, cg_dihedrals=["phi", "psi"])
    assert str(err.value) == (
        f"[target] cg_selection '{selection}' leaves dihedral psi SER3 (SER3-N, SER3-CA, "
        "SER3-C, NME4-N) without atoms NME4-N: add them, or leave cg_selection out (the "
        "default holds every phi / psi)"
    )
    with pytest.raises(ConfigError, match=r"no backbone dihedral 'omega'; expected 'phi', 'psi'"):
        Molecule(pdb=GS, cg_dihedrals=["omega"])


def _config(path, target: str):
    path.write_text(f'[target]\nkind = "molecule"\n{target}\n')
    return str(path)


def test_cli_inspect(tmp_path, capsys, monkeypatch):
    pytest.importorskip("PeptideBuilder")  # the config builds its peptide from a sequence
    monkeypatch.setenv("COARSEFLOW_PEPTIDE_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path / "c.toml", 'sequence = "A"')
    assert main(["inspect", config]) == 0
    out = capsys.readouterr().out
    assert "(22 atoms, 3 residues, 300 K)" in out
    assert (
        "cg_selection: (resid 0 and name C) or (resid 1 and name N CA C) or (resid 2 and name N)"
    ) in out
    assert "X, coarse-grained: 5 atoms, 9 coordinates" in out
    assert "Y, fast: 17 atoms, 51 coordinates" in out
    assert "ALA2-N (6), ALA2-CA (8), ALA2-C (10)" in out  # the gauge frame
    assert "  psi ALA2     ALA2-N - ALA2-CA - ALA2-C - NME3-N" in out

    bad = _config(
        tmp_path / "bad.toml", f'pdb = "{GS}"\ncg_selection = "name CA C"\ncg_dihedrals = ["phi"]'
    )
    assert main(["inspect", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "coarseflow: error: [target] cg_selection 'name CA C' leaves dihedral phi GLY2 "
        "(ACE1-C, GLY2-N, GLY2-CA, GLY2-C) without atoms GLY2-N (and 1 more dihedrals)"
    )
    assert "\n" not in err

    toy = tmp_path / "toy.toml"
    toy.write_text('[target]\nkind = "double_well"\n')
    assert main(["inspect", str(toy)]) == 0
    assert "DoubleWell: X 1 coordinates (coarse-grained), Y 1 (fast)" in capsys.readouterr().out
