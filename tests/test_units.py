"""The one k_B: OpenMM's value, and k_B T in kJ/mol."""

import numpy as np
import pytest

from coarseflow.units import MOLAR_GAS_CONSTANT, kT_from_kelvin


def test_molar_gas_constant_is_openmms():
    unit = pytest.importorskip("openmm.unit")
    exact = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    assert MOLAR_GAS_CONSTANT == pytest.approx(exact, rel=1e-15)


def test_kT_from_kelvin():
    assert kT_from_kelvin(300.0) == pytest.approx(2.494338785445972, rel=1e-15)
    kT = kT_from_kelvin([300, 600])
    assert kT.dtype == np.float64 and kT.shape == (2,)
    np.testing.assert_allclose(kT, [2.494338785445972, 4.988677570891944], rtol=1e-15)
