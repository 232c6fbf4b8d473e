"""Ramachandran basins that depend on the residue type: general, glycine, proline, pre-proline.

Which residues need their own basins follows the four basic Ramachandran plots of Ho & Brasseur,
"The Ramachandran plots of glycine and pre-proline", BMC Struct. Biol. 5:14 (2005): generic (the
18 residues with a C-beta), glycine, proline and pre-proline (a residue followed by a proline);
MolProbity's validation contours (Lovell et al., Proteins 50:437, 2003) use the same split.
Region names follow the same paper. The boxes themselves are ours, rectangles in degrees placed
on the barriers between those regions (no published set of boxes is copied):

* general: alanine dipeptide's basins (C5, C7eq/PII, alpha_R, alpha_L, C7ax), drawn on the
  barriers of its (phi, psi) free-energy surface in implicit solvent (Amber99SB-ILDN + OBC);
  the table is in :data:`GENERAL`'s docstring and :data:`coarseflow.analysis.observables.BASINS`.
* glycine: no C-beta, so its plot is symmetric under (phi, psi) -> (-phi, -psi); the boxes are
  too. phi in [-120, 0): alpha_R for psi in [-120, 60), beta_P (polyproline II) above it and
  below psi = -120; phi in [0, 120): the mirror images alpha_L (psi in [-60, 120)) and beta_PR;
  |phi| >= 120: beta_S (extended, over the phi = 180 seam), every psi. "other" is empty.
* proline: the ring holds phi near -65 deg, so its basins are the general ones that phi in
  [-120, 0) allows: alpha_R (psi in [-150, 50)) and C7eq/PII (the rest of psi). C5 (phi < -120)
  and every phi > 0 box are not proline states: samples there are "other", a sign of a broken
  ring or a flipped chirality rather than a basin.
* pre-proline: the general boxes with the zeta region, which only pre-proline populates (Ho &
  Brasseur, near phi -140, psi 80), cut out of C5 as phi in [-180, -120), psi in [50, 110).

Every box is half-open, [lo, hi), on angles wrapped to [-180, 180); every point of the plane is
in exactly one basin of a set or in "other" (tests/test_ramachandran.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import ArrayLike, Float

from coarseflow.analysis.metrics import weighted_proportion_stderr

__all__ = [
    "BASIN_SETS",
    "GENERAL",
    "GLYCINE",
    "PRE_PROLINE",
    "PROLINE",
    "BasinSet",
    "backbone_classes",
    "residue_class",
]

Box = tuple[tuple[float, float], tuple[float, float]]  # ((phi_lo, phi_hi), (psi_lo, psi_hi))


@dataclasses.dataclass(frozen=True)
class BasinSet:
    """One residue class's basins: ``kind`` (its class), ``basins`` (names, in order) and each
    basin's boxes ((phi_lo, phi_hi), (psi_lo, psi_hi)) in degrees. Label len(basins) is
    "other"; ``names`` lists the basins then "other"."""

    kind: str
    basins: tuple[str, ...]
    boxes: tuple[tuple[Box, ...], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.basins, "other")

    def labels(
        self, phi: Float[ArrayLike, "*batch"], psi: Float[ArrayLike, "*batch"]
    ) -> np.ndarray:
        """Basin index of each (phi, psi) in radians, len(basins) for "other" (also for
        non-finite angles); int64 of the broadcast shape."""
        phi_d, psi_d = np.broadcast_arrays(_wrap_degrees(phi), _wrap_degrees(psi))
        labels = np.full(phi_d.shape, len(self.basins), dtype=np.int64)
        for k, boxes in enumerate(self.boxes):
            inside = np.zeros(phi_d.shape, dtype=bool)
            for (a0, a1), (b0, b1) in boxes:
                inside |= (phi_d >= a0) & (phi_d < a1) & (psi_d >= b0) & (psi_d < b1)
            labels = np.where(inside & (labels == len(self.basins)), k, labels)
        return labels

    def populations(
        self,
        phi: Float[ArrayLike, " N"],
        psi: Float[ArrayLike, " N"],
        weights: Float[ArrayLike, " N"] | None = None,
    ) -> np.ndarray:
        """Fraction of the samples (or of the weight) in each of ``names`` (len(names),),
        summing to 1. ``weights``: (N,) non-negative, None for equal weights."""
        labels = self.labels(phi, psi).reshape(-1)
        if labels.size == 0:
            raise ValueError("phi, psi: expected at least one sample")
        w = np.ones(labels.size) if weights is None else _checked(weights, labels.size)
        return np.bincount(labels, weights=w, minlength=len(self.names)) / w.sum()

    def population_errors(
        self, phi: Float[ArrayLike, " N"], psi: Float[ArrayLike, " N"], weights
    ) -> np.ndarray:
        """Standard error of each of :meth:`populations` (len(names),) under importance
        weights: metrics.weighted_proportion_stderr of the basin's indicator."""
        labels = self.labels(phi, psi).reshape(-1)
        onehot = labels[:, None] == np.arange(len(self.names))[None, :]
        return np.asarray(weighted_proportion_stderr(onehot, weights), dtype=np.float64)


def _wrap_degrees(angle_rad) -> np.ndarray:
    deg = np.degrees(np.asarray(angle_rad, dtype=np.float64))
    return (deg + 180.0) % 360.0 - 180.0


def _checked(weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"weights: expected {n} weights, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights: expected finite non-negative weights with a positive sum")
    return w


def _product(phis, psis) -> tuple[Box, ...]:
    return tuple((a, b) for a in phis for b in psis)


# the general boxes' pieces: the beta region wraps over phi = 180, the upper band over psi = 180
_LEFT = ((-180.0, 0.0), (120.0, 180.0))
_UPPER = ((50.0, 180.0), (-180.0, -150.0))
_C5_PHI = ((-180.0, -120.0), (120.0, 180.0))
_ALL_PSI = ((-180.0, 180.0),)

GENERAL = BasinSet(
    "general",
    ("C5", "C7eq/PII", "alpha_R", "alpha_L", "C7ax"),
    (
        _product(_C5_PHI, _UPPER),
        _product(((-120.0, 0.0),), _UPPER),
        _product(_LEFT, ((-150.0, 50.0),)),
        _product(((0.0, 120.0),), ((-10.0, 150.0),)),
        _product(((0.0, 120.0),), ((-150.0, -10.0),)),
    ),
)
"""A residue with a C-beta (alanine's boxes, degrees, half-open):

============  ==========================  ==========================
basin          phi                         psi
============  ==========================  ==========================
C5             [-180, -120) or [120, 180)  [50, 180) or [-180, -150)
C7eq/PII       [-120, 0)                   [50, 180) or [-180, -150)
alpha_R        [-180, 0) or [120, 180)     [-150, 50)
alpha_L        [0, 120)                    [-10, 150)
C7ax           [0, 120)                    [-150, -10)
other          [0, 120)                    [150, 180) or [-180, -150)
============  ==========================  ==========================
"""

GLYCINE = BasinSet(
    "glycine",
    ("alpha_R", "alpha_L", "beta_P", "beta_PR", "beta_S"),
    (
        _product(((-120.0, 0.0),), ((-120.0, 60.0),)),
        _product(((0.0, 120.0),), ((-60.0, 120.0),)),
        _product(((-120.0, 0.0),), ((60.0, 180.0), (-180.0, -120.0))),
        _product(((0.0, 120.0),), ((120.0, 180.0), (-180.0, -60.0))),
        _product(_C5_PHI, _ALL_PSI),
    ),
)
"""Glycine: symmetric under (phi, psi) -> (-phi, -psi); "other" is empty."""

PROLINE = BasinSet(
    "proline",
    ("C7eq/PII", "alpha_R"),
    (
        _product(((-120.0, 0.0),), _UPPER),
        _product(((-120.0, 0.0),), ((-150.0, 50.0),)),
    ),
)
"""Proline: the general boxes that phi in [-120, 0) allows; the rest of the plane is "other"."""

PRE_PROLINE = BasinSet(
    "pre-proline",
    ("C5", "zeta", "C7eq/PII", "alpha_R", "alpha_L", "C7ax"),
    (
        _product(((-180.0, -120.0),), ((110.0, 180.0), (-180.0, -150.0)))
        + _product(((120.0, 180.0),), _UPPER),
        _product(((-180.0, -120.0),), ((50.0, 110.0),)),
        *GENERAL.boxes[1:],
    ),
)
"""A residue before a proline: the general boxes with zeta (phi [-180, -120), psi [50, 110))
cut out of C5 (C5's part over the seam, phi >= 120, keeps all of its psi: zeta lies left of
phi = -120)."""

BASIN_SETS: dict[str, BasinSet] = {s.kind: s for s in (GENERAL, GLYCINE, PROLINE, PRE_PROLINE)}

# residue names as force fields and PDB files spell them; Amber's terminal variants carry an
# N / C prefix (NGLY, CPRO) when a chain has no caps
_GLYCINE = {"GLY"}
_PROLINE = {"PRO", "HYP"}


def _base_name(resname: str | None) -> str:
    name = (resname or "").strip().upper()
    if len(name) == 4 and name[0] in "NC" and name[1:] in _GLYCINE | _PROLINE:
        return name[1:]
    return name


def residue_class(resname: str, next_resname: str | None = None) -> str:
    """The basin set's kind (a key of :data:`BASIN_SETS`) of a residue named ``resname``
    followed by ``next_resname`` (None: no residue after it). Glycine and proline keep their own
    class before a proline; any other residue before one is pre-proline."""
    name = _base_name(resname)
    if name in _GLYCINE:
        return "glycine"
    if name in _PROLINE:
        return "proline"
    if _base_name(next_resname) in _PROLINE:
        return "pre-proline"
    return "general"


def backbone_classes(topology, phi_quads, psi_quads) -> list[str]:
    """The class (:func:`residue_class`) of each (phi, psi) residue of an mdtraj ``topology``;
    ``phi_quads``, ``psi_quads``: (m, 4) atoms (targets.backbone.phi_psi_indices). The residue
    is that of phi's N, the next one that of psi's last atom."""
    return [
        residue_class(
            topology.atom(int(phi[1])).residue.name, topology.atom(int(psi[3])).residue.name
        )
        for phi, psi in zip(phi_quads, psi_quads, strict=True)
    ]
