"""Samplers: conditional MCMC on Y | X (MALA, HMC, BAOAB) and the conditional mean force."""

from coarseflow.samplers.conditional import (
    KERNELS,
    ChainSettings,
    minimize_y,
    sample_conditional,
)
from coarseflow.samplers.force import MeanForce, control_variate_forces, mean_force

__all__ = [
    "KERNELS",
    "ChainSettings",
    "MeanForce",
    "control_variate_forces",
    "mean_force",
    "minimize_y",
    "sample_conditional",
]
