"""Basin populations with their errors and block means over the left half of the Ramachandran
plane, of frames recorded at the target temperature (n_records, C chains).

Uncertainties. The C chains are C independent replica-exchange simulations (exchanges happen only
within a chain's own ladder), all started from the same minimised structure and decorrelated by
the burn-in. A basin population is reported as the mean over all recorded frames of the target
temperature with two standard errors: between chains (std over the C per-chain populations /
sqrt(C)) and between ``n_blocks`` contiguous blocks in time (all chains pooled per block); the
quoted error ``populations_err`` is the larger of the two.
"""

from __future__ import annotations

import numpy as np

from coarseflow.analysis.observables import BASINS, basin_labels

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


def population_statistics(labels: np.ndarray, n_blocks: int) -> dict[str, np.ndarray]:
    """Basin populations of labels (n_records, C) (one basin label per frame and chain).

    Returns populations (B+1,) over all frames ("other" last) and their standard errors:
    ``err_chains`` (std over the C chains / sqrt(C); NaN for C = 1), ``err_blocks`` (std over
    n_blocks contiguous time blocks of all chains / sqrt(n_blocks)) and ``err`` = the larger.
    """
    labels = np.asarray(labels)
    n_records, n_chains = labels.shape
    pops = basin_fractions(labels)
    if n_chains > 1:
        per_chain = np.stack([basin_fractions(labels[:, c]) for c in range(n_chains)])
        err_chains = per_chain.std(axis=0, ddof=1) / np.sqrt(n_chains)
    else:
        err_chains = np.full_like(pops, np.nan)
    blocks = np.array_split(np.arange(n_records), n_blocks)
    per_block = np.stack([basin_fractions(labels[b]) for b in blocks])
    err_blocks = per_block.std(axis=0, ddof=1) / np.sqrt(n_blocks)
    return {
        "populations": pops,
        "err_chains": err_chains,
        "err_blocks": err_blocks,
        "err": np.fmax(err_chains, err_blocks),
    }


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
