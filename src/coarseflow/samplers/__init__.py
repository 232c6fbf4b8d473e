"""Samplers: conditional MCMC on Y | X (MALA, HMC, BAOAB) and the conditional mean force."""

from coarseflow.samplers.conditional import (
    KERNELS,
    ChainSettings,
    MeanForce,
    control_variate_forces,
    mean_force,
    minimize_y,
    sample_conditional,
)

__all__ = [
    "KERNELS",
    "ChainSettings",
    "MeanForce",
    "control_variate_forces",
    "mean_force",
    "minimize_y",
    "sample_conditional",
]
