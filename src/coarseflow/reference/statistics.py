"""Basin populations with their errors, per residue, and block means over the left half of the
Ramachandran plane, of frames recorded at the target temperature (n_records, C chains).

Uncertainties. The C chains are C independent replica-exchange simulations (exchanges happen only
within a chain's own ladder), all started from the same minimised structure and decorrelated by
the burn-in. A basin population is the mean over all recorded frames of the target temperature
with two standard errors, between chains and between time blocks; the quoted one is the larger
(:func:`coarseflow.analysis.basin_statistics.reference_populations`, which evaluation uses on
the file's frames too).
"""

from __future__ import annotations

import numpy as np

from coarseflow.analysis.basin_statistics import ReferencePopulations, reference_populations
from coarseflow.analysis.observables import BASINS, basin_labels
from coarseflow.analysis.ramachandran import BASIN_SETS, backbone_classes
from coarseflow.targets.backbone import residue_labels

LEFT_BASINS = ("C5", "C7eq/PII", "alpha_R")  # phi < 0 (and the wrapped beta region)

COMPARED = (
    "energy",
    "energy_alpha_R",
    "energy_beta",
    "rg",
    "rg_alpha_R",
    "rg_beta",
    "p_alpha_R_given_left",
)
"""Statistics compared between the JAX reference and OpenMM: mean potential energy (kJ/mol) and
radius of gyration (nm) over the left half of the Ramachandran plane, within alpha_R and within
beta = C5 + C7eq/PII (these equilibrate within picoseconds), and P(alpha_R | left half)."""


def basin_fractions(labels: np.ndarray) -> np.ndarray:
    """labels (...,) -> fraction in each basin (n_basins + 1,), "other" last."""
    labels = np.asarray(labels).reshape(-1)
    return np.bincount(labels, minlength=len(BASINS) + 1) / max(labels.size, 1)


def population_record(names, stats: ReferencePopulations) -> dict[str, dict[str, float]]:
    """The summary's populations, populations_err, populations_err_chains and
    populations_err_blocks, each name -> value, of ``stats`` over the basin ``names``."""
    fields = {
        "populations": stats.populations,
        "populations_err": stats.err,
        "populations_err_chains": stats.err_chains,
        "populations_err_blocks": stats.err_blocks,
    }
    return {key: dict(zip(names, v.tolist(), strict=True)) for key, v in fields.items()}


def residue_populations(mol, phi, psi, chain, n_blocks: int) -> list[dict]:
    """Every (phi, psi) residue's populations in its class's basins (ramachandran.BASIN_SETS),
    one record each: residue (its label, "ALA2"), class and :func:`population_record`'s keys.

    ``mol``: the ReferenceMolecule (its topology names the residues); ``phi``, ``psi``:
    (frames, m) rad, time-major; ``chain``: (frames,) each frame's ladder.
    """
    top = mol.mdtraj_topology
    labels = residue_labels(top, mol.phi_atoms)
    classes = backbone_classes(top, mol.phi_atoms, mol.psi_atoms)
    out = []
    for k, (label, kind) in enumerate(zip(labels, classes, strict=True)):
        basins = BASIN_SETS[kind]
        stats = reference_populations(basins, phi[:, k], psi[:, k], chain, n_blocks)
        out.append({"residue": label, "class": kind, **population_record(basins.names, stats)})
    return out


def block_mean(values: np.ndarray, mask: np.ndarray, n_blocks: int) -> tuple[float, float]:
    """Mean of values (n_records, C) over frames where mask, and its block standard error
    (std of the means of n_blocks contiguous time blocks, chains pooled, / sqrt(n_blocks))."""
    values, mask = np.asarray(values, np.float64), np.asarray(mask, bool)
    mean = float(values[mask].mean()) if mask.any() else float("nan")
    means = [
        values[b][mask[b]].mean()
        for b in np.array_split(np.arange(len(values)), n_blocks)
        if mask[b].any()
    ]
    err = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")
    return mean, err


def left_half_statistics(phi, psi, energy, rg, n_blocks: int) -> dict[str, float]:
    """The :data:`COMPARED` statistics, each with a block standard error ("<name>_err"), of
    frames (n_records, C) of phi, psi (rad), energy (kJ/mol) and rg (nm); also n_frames and
    fraction_left (the fraction of frames in the left half)."""
    labels = basin_labels(phi, psi)
    left = np.isin(labels, [BASINS.index(b) for b in LEFT_BASINS])
    alpha_r = labels == BASINS.index("alpha_R")
    beta = np.isin(labels, [BASINS.index("C5"), BASINS.index("C7eq/PII")])
    out = {"n_frames": int(labels.size), "fraction_left": float(left.mean())}
    for name, values, mask in (
        ("energy", energy, left), ("energy_alpha_R", energy, alpha_r),
        ("energy_beta", energy, beta), ("rg", rg, left), ("rg_alpha_R", rg, alpha_r),
        ("rg_beta", rg, beta), ("p_alpha_R_given_left", alpha_r.astype(np.float64), left),
    ):  # fmt: skip
        out[name], out[name + "_err"] = block_mean(values, mask, n_blocks)
    return out
