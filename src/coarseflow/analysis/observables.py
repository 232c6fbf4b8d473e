"""Molecular observables from positions: dihedrals, (phi, psi), Rg, RMSD, Ramachandran basins.

Every function takes positions in nanometres with any leading batch shape, ``(..., n_atoms, 3)``,
and works on NumPy and on JAX arrays: NumPy in gives NumPy out (computed in float64), a JAX
array (or tracer) in gives a JAX array out, so the geometric functions jit, vmap and
differentiate. They agree with mdtraj (``compute_dihedrals``, ``compute_phi`` / ``compute_psi``,
``compute_rg``, ``rmsd``; the tests check it) but need no Trajectory and no unit cell.

Angles are in radians in (-pi, pi], lengths in nm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int

from coarseflow.analysis.ramachandran import GENERAL
from coarseflow.forcefield.geometry import dihedrals
from coarseflow.targets.backbone import phi_psi_indices

__all__ = [
    "BASINS",
    "BASIN_RECTANGLES",
    "basin_labels",
    "basin_populations",
    "dihedral",
    "phi_psi",
    "phi_psi_indices",
    "radius_of_gyration",
    "rmsd",
]


def _xp(*arrays):
    """jax.numpy if any argument is a JAX array (or tracer), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _positions(positions, xp):
    pos = xp.asarray(positions)
    if xp is np:
        pos = pos.astype(np.float64)
    if pos.ndim < 2 or pos.shape[-1] != 3:
        raise ValueError(f"positions: expected shape (..., n_atoms, 3) in nm, got {pos.shape}")
    return pos


# ---- dihedrals ---------------------------------------------------------------------------------


def dihedral(
    positions: Float[ArrayLike, "*batch n_atoms 3"], quad: Int[ArrayLike, "m 4"]
) -> Float[ArrayLike, "*batch m"]:
    """Dihedral angle(s) of the atoms ``quad`` = (i, j, k, l) in radians, in (-pi, pi].

    IUPAC sign convention (as mdtraj.compute_dihedrals and OpenMM): looking along j -> k, the
    angle is positive when the bond k -> l is rotated clockwise from i -> j. ``quad`` is (4,)
    for one angle (result shape (...)) or (m, 4) for several (result (..., m)). The indices are
    checked here; the angle is :func:`coarseflow.forcefield.geometry.dihedrals`.
    """
    xp = _xp(positions)
    pos = _positions(positions, xp)
    q = np.asarray(quad, dtype=np.int64)
    if q.shape[-1] != 4 or q.ndim > 2:
        raise ValueError(f"quad: expected 4 atom indices (or (m, 4)), got shape {q.shape}")
    n_atoms = pos.shape[-2]
    if q.size and (q.min() < -n_atoms or q.max() >= n_atoms):
        raise ValueError(f"quad: atom indices {q.tolist()} outside [0, {n_atoms})")
    angles = dihedrals(pos, q.reshape(-1, 4))
    return angles.reshape(angles.shape[:-1] + q.shape[:-1])


def phi_psi(
    positions: Float[ArrayLike, "*batch n_atoms 3"], topology
) -> tuple[Float[ArrayLike, "*batch m"], Float[ArrayLike, "*batch m"]]:
    """(phi (..., m), psi (..., m)) in radians for the residues of :func:`phi_psi_indices`."""
    phi_q, psi_q = phi_psi_indices(topology)
    return dihedral(positions, phi_q), dihedral(positions, psi_q)


# ---- size and shape ----------------------------------------------------------------------------


def radius_of_gyration(
    positions: Float[ArrayLike, "*batch n 3"], masses: Float[ArrayLike, " n"] | None = None
) -> Float[ArrayLike, "*batch"]:
    """Radius of gyration in nm of the n atoms given, per configuration.

    Without ``masses`` every atom counts equally: sqrt(mean_i |r_i - mean r|^2), exactly
    mdtraj.compute_rg's default. With ``masses`` (n,) (amu) it is mass-weighted about the centre
    of mass. For a subset (heavy atoms, backbone), pass ``positions[..., indices, :]``.
    """
    xp = _xp(positions, masses)
    pos = _positions(positions, xp)
    if masses is None:
        w = xp.full(pos.shape[-2], 1.0 / pos.shape[-2], dtype=pos.dtype)
    else:
        m = xp.asarray(masses, dtype=pos.dtype)
        if m.shape != (pos.shape[-2],):
            raise ValueError(f"masses: expected shape ({pos.shape[-2]},), got {m.shape}")
        w = m / xp.sum(m)
    centre = xp.sum(w[:, None] * pos, axis=-2, keepdims=True)
    return xp.sqrt(xp.sum(w * xp.sum((pos - centre) ** 2, axis=-1), axis=-1))


def rmsd(
    positions: Float[ArrayLike, "*batch n_atoms 3"],
    reference: Float[ArrayLike, "n_atoms 3"],
    atom_indices: Int[ArrayLike, " k"] | None = None,
) -> Float[ArrayLike, "*batch"]:
    """Root-mean-square deviation in nm from ``reference`` after optimal superposition.

    Both structures are centred (unweighted centroid of the atoms used) and the best rotation is
    found by the Kabsch method (SVD of the 3x3 correlation matrix, reflections excluded), as in
    mdtraj.rmsd. ``atom_indices`` restricts both the fit and the deviation to those atoms. A
    structure with a non-finite coordinate (a diverged model's) gets NaN, the others their value.
    """
    xp = _xp(positions, reference)
    pos = _positions(positions, xp)
    ref = _positions(reference, xp)
    if ref.ndim != 2 or ref.shape != pos.shape[-2:]:
        raise ValueError(
            f"reference: expected shape {pos.shape[-2:]} (one structure), got {ref.shape}"
        )
    if atom_indices is not None:
        idx = np.asarray(atom_indices, dtype=np.int64)
        pos, ref = pos[..., idx, :], ref[idx]
    n = pos.shape[-2]
    p = pos - xp.mean(pos, axis=-2, keepdims=True)
    r = ref - xp.mean(ref, axis=0)
    finite = xp.all(xp.isfinite(p), axis=(-2, -1))
    p = xp.where(finite[..., None, None], p, 0.0)  # NumPy's SVD refuses NaN outright
    corr = xp.einsum("...ni,nj->...ij", p, r)
    sv = xp.linalg.svd(corr, compute_uv=False)
    d = xp.sign(xp.linalg.det(corr))
    d = xp.where(d == 0, 1.0, d)
    s = sv[..., 0] + sv[..., 1] + d * sv[..., 2]
    msd = (xp.sum(p * p, axis=(-2, -1)) + xp.sum(r * r) - 2.0 * s) / n
    return xp.where(finite, xp.sqrt(xp.maximum(msd, 0.0)), xp.nan)


# ---- Ramachandran basins -----------------------------------------------------------------------
# alanine's (the general residue class's); analysis/ramachandran.py has every residue class's

BASINS: tuple[str, ...] = GENERAL.basins
"""Names of the general (alanine) Ramachandran basins; label len(BASINS) is "other".

Each basin is a union of rectangles [phi_lo, phi_hi) x [psi_lo, psi_hi) in degrees, angles
wrapped to [-180, 180) (``BASIN_RECTANGLES``); the table and the source of the boundaries are in
:data:`coarseflow.analysis.ramachandran.GENERAL`. Glycine, proline and pre-proline residues have
their own sets (``ramachandran.BASIN_SETS``, picked by ``ramachandran.residue_class``).
"""

BASIN_RECTANGLES: dict[str, tuple[tuple[tuple[float, float], tuple[float, float]], ...]] = dict(
    zip(GENERAL.basins, GENERAL.boxes, strict=True)
)
"""Each basin's rectangles ((phi_lo, phi_hi), (psi_lo, psi_hi)) in degrees, half-open."""


def basin_labels(phi: Float[ArrayLike, "*batch"], psi: Float[ArrayLike, "*batch"]) -> np.ndarray:
    """Basin index (into BASINS) of each (phi, psi) in radians; len(BASINS) means "other".

    NumPy int64 array of the broadcast shape of phi and psi. Non-finite angles are "other".
    """
    return GENERAL.labels(phi, psi)


def basin_populations(
    phi: Float[ArrayLike, " N"],
    psi: Float[ArrayLike, " N"],
    weights: Float[ArrayLike, " N"] | None = None,
) -> dict[str, float]:
    """Fraction of samples (or of the weight) in each basin of BASINS, plus "other".

    ``phi``, ``psi``: (N,) radians; ``weights``: (N,) non-negative (e.g. normalised importance
    weights), None for equal weights. The values sum to 1.
    """
    pops = GENERAL.populations(phi, psi, weights)
    return {name: float(m) for name, m in zip(GENERAL.names, pops, strict=True)}


def basin_population_errors(
    phi: Float[ArrayLike, " N"],
    psi: Float[ArrayLike, " N"],
    weights: Float[ArrayLike, " N"],
) -> dict[str, float]:
    """Standard error of each of :func:`basin_populations` (weighted, as for importance
    weights): metrics.weighted_proportion_stderr of the basin's indicator."""
    err = GENERAL.population_errors(phi, psi, weights)
    return {name: float(e) for name, e in zip(GENERAL.names, err, strict=True)}
