"""Selections whose p(Y|X) is not unimodal are named (targets/molecule/rotamers.py): a side
chain's chi, a hydroxyl, a proline's pucker; methyls (a declared symmetry) and amide bonds are
not; adding the torsion's atoms to X, or naming a chi in cg_dihedrals, is the fix."""

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("openmm")
pytest.importorskip("PeptideBuilder")
mdtraj = pytest.importorskip("mdtraj")

from coarseflow.errors import ConfigError  # noqa: E402
from coarseflow.targets.molecule import Molecule, peptide, rotamers  # noqa: E402
from coarseflow.targets.molecule.describe import describe  # noqa: E402
from coarseflow.targets.molecule.selection import (  # noqa: E402
    check_cg_dihedrals,
    default_cg_selection,
    side_chain_dihedrals,
)

BACKBONE = "(resid 0 and name C) or (resid 1 and name N CA C) or (resid 2 and name N)"


@pytest.fixture(scope="module", autouse=True)
def peptide_cache(tmp_path_factory):
    """Peptides built from a sequence go to this module's folder, once."""
    old = os.environ.get(peptide.CACHE_ENV)
    os.environ[peptide.CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ[peptide.CACHE_ENV]
    else:
        os.environ[peptide.CACHE_ENV] = old


def _warnings(molecule) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rotamers.warn_if_multimodal(molecule)
    return [str(w.message) for w in caught if issubclass(w.category, rotamers.MultimodalWarning)]


def test_alanine_dipeptide_backbone_selection_is_unimodal():
    m = Molecule()  # ACE-ALA-NME, the five phi / psi atoms
    assert len(m.info.rotors) == 3  # three methyls: declared symmetries, hence fine
    assert rotamers.of_molecule(m) == []
    assert _warnings(m) == []
    assert "Y|X multimodal torsions: none" in describe(m)
    # without the declared symmetry the same methyls are rotors with several minima
    bare = rotamers.multimodal_torsions(
        m.topology, m.cg_atoms, np.asarray(m.info.reference_positions), rotors=()
    )
    assert [t.kind for t in bare] == ["rotor"] * 3
    assert sorted(t.atoms[2] for t in bare) == sorted(r.centre for r in m.info.rotors)


def test_capped_serine_warns_with_the_chi1_atoms():
    m = Molecule(sequence="S")  # ACE-SER-NME built, minimised, cached
    assert m.cg_selection == BACKBONE
    found = rotamers.of_molecule(m)
    assert [(t.kind, t.name) for t in found] == [
        ("rotamer", "chi1 SER2"),
        ("rotor", "torsion SER2 CB-OG"),  # the hydroxyl hydrogen
    ]
    (line,) = _warnings(m)
    assert "\n" not in line
    assert line.startswith(
        "p(Y|X) is multimodal: chi1 SER2 (torsion SER2-N, SER2-CA, "
        "SER2-CB, SER2-OG) has several minima that X does not fix"
    )
    assert "add SER2-CB, SER2-OG to [target] cg_selection" in line
    assert line.endswith("(and 1 more: coarseflow inspect lists them)")
    text = describe(m)
    assert "Y|X multimodal torsions: 2" in text
    assert "  chi1 SER2" in text and "SER2-N - SER2-CA - SER2-CB - SER2-OG; add SER2-CB" in text


def test_valine_chi1_in_x_removes_the_warning():
    m = Molecule(sequence="V")
    (line,) = _warnings(m)  # the two methyls are declared; chi1 is the one torsion
    assert "chi1 VAL2 (torsion VAL2-N, VAL2-CA, VAL2-CB, VAL2-CG1)" in line
    assert "add VAL2-CB, VAL2-CG1 to [target] cg_selection" in line
    assert '(and name "chi1 VAL2" in [target] cg_dihedrals to have it checked)' in line
    # asked for but not in X: refused, naming the atoms
    with pytest.raises(ConfigError, match=r"leaves dihedral chi1 VAL2 .* without atoms VAL2-CB"):
        Molecule(sequence="V", cg_selection=BACKBONE, cg_dihedrals=["phi", "psi", "chi1"])
    wider = f"{BACKBONE} or (resid 1 and name CB CG1)"
    fixed = Molecule(sequence="V", cg_selection=wider, cg_dihedrals=["phi", "psi", "chi1 VAL2"])
    assert rotamers.of_molecule(fixed) == []
    assert _warnings(fixed) == []
    assert "Y|X multimodal torsions: none" in describe(fixed)
    assert len(fixed.info.rotors) == 4  # both valine methyls still declared


def test_default_selection_holds_the_chis_cg_dihedrals_names(tmp_path):
    path, _ = peptide.peptide_pdb(tmp_path / "v.pdb", ("ACE", "VAL", "NME"))
    top = mdtraj.load_topology(str(path))
    (chi1,) = side_chain_dihedrals(top)
    assert chi1.name == "chi1 VAL2"
    assert [top.atom(i).name for i in chi1.atoms] == ["N", "CA", "CB", "CG1"]
    selection = default_cg_selection(top, ["phi", "psi", "chi1"])
    assert selection == (
        "(resid 0 and name C) or (resid 1 and name N CA C CB CG1) or (resid 2 and name N)"
    )
    assert default_cg_selection(top, ["phi"]) == default_cg_selection(top) == BACKBONE
    check_cg_dihedrals(top, top.select(selection), ["chi1 VAL2"], selection)  # held: no error
    with pytest.raises(ConfigError, match=r"no backbone dihedral 'chi2'"):
        check_cg_dihedrals(top, top.select(selection), ["chi2"], selection)


def test_proline_pucker_and_amide_bonds(tmp_path):
    path, _ = peptide.peptide_pdb(tmp_path / "p.pdb", ("ACE", "PRO", "NME"))
    top = mdtraj.load_topology(str(path))
    positions = mdtraj.load(str(path)).xyz[0].astype(np.float64)
    cg = top.select(default_cg_selection(top))
    found = [t for t in rotamers.multimodal_torsions(top, cg, positions) if t.kind != "rotor"]
    (pucker,) = found  # the ring's bonds do not rotate; the amide bonds are planar
    assert pucker.kind == "ring pucker" and pucker.name == "ring pucker PRO2"
    assert sorted(top.atom(i).name for i in pucker.add) == ["CB", "CD", "CG"]
    ring = top.select(f"{default_cg_selection(top)} or (resid 1 and name CB CG CD)")
    assert [
        t for t in rotamers.multimodal_torsions(top, ring, positions) if t.kind != "rotor"
    ] == []
    # the caps' amide bonds live in Y here (their far atoms are fast) and are not flagged
    amide = [t for t in rotamers.multimodal_torsions(top, cg, positions) if "C-N" in t.name]
    assert amide == []
