"""Physical constants in OpenMM's units (nm, ps, amu, kJ/mol, K): the one k_B of coarseflow."""

from __future__ import annotations

import numpy as np

MOLAR_GAS_CONSTANT = 8.31446261815324e-3
"""k_B per mole in kJ/mol/K: OpenMM's ``unit.MOLAR_GAS_CONSTANT_R`` / 1000 (the exact SI value)."""


def kT_from_kelvin(temperature):
    """k_B T in kJ/mol (float64) for a temperature in K, or an array of them (same shape)."""
    return MOLAR_GAS_CONSTANT * np.asarray(temperature, dtype=np.float64)
