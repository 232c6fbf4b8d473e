"""Molecule files shipped with coarseflow; open them with ``importlib.resources``:
``importlib.resources.files("coarseflow.data") / "alanine_dipeptide.pdb"``.

``alanine_dipeptide.pdb``: ACE-ALA-NME, 22 atoms, built offline by
``scripts/build_alanine_dipeptide.py`` (the file's header says how).
"""
