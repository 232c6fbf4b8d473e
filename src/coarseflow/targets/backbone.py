"""The backbone dihedrals of a peptide's topology: which atoms define each residue's phi and psi.

Pure Python over an mdtraj.Topology (mdtraj itself is not imported), so that the molecule target
and the analysis share one definition without the analysis loading mdtraj.
"""

from __future__ import annotations

import numpy as np


def phi_psi_indices(topology) -> tuple[np.ndarray, np.ndarray]:
    """Atom quadruplets of the backbone dihedrals of every residue that has both phi and psi.

    ``topology`` is an mdtraj.Topology. Residue i (in chain order) qualifies if it has atoms N,
    CA and C, the residue before it in the same chain has a C and the one after it an N:
    phi_i = (C_{i-1}, N_i, CA_i, C_i), psi_i = (N_i, CA_i, C_i, N_{i+1}) -- the same quadruplets
    as mdtraj.compute_phi / compute_psi for those residues. Capping groups (ACE, NME) have no
    CA and so contribute only the neighbouring atoms. Returns (phi (m, 4), psi (m, 4)) int64, m
    possibly 0.
    """
    phi, psi = [], []
    for chain in topology.chains:
        residues = list(chain.residues)
        names = [{a.name: a.index for a in r.atoms} for r in residues]
        for i in range(1, len(residues) - 1):
            prev, cur, nxt = names[i - 1], names[i], names[i + 1]
            if all(k in cur for k in ("N", "CA", "C")) and "C" in prev and "N" in nxt:
                phi.append((prev["C"], cur["N"], cur["CA"], cur["C"]))
                psi.append((cur["N"], cur["CA"], cur["C"], nxt["N"]))
    return np.asarray(phi, np.int64).reshape(-1, 4), np.asarray(psi, np.int64).reshape(-1, 4)


def residue_labels(topology, phi_quads) -> tuple[str, ...]:
    """The label (residue name + number, "ALA2") of each (phi, psi) residue of an mdtraj
    ``topology``: the residue of phi's N; ``phi_quads`` (m, 4) from :func:`phi_psi_indices`."""
    residues = (topology.atom(int(q[1])).residue for q in phi_quads)
    return tuple(f"{r.name}{r.resSeq}" for r in residues)
