"""Helpers of the scripts in scripts/ (the scripts themselves run outside CI)."""

import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(autouse=True)
def scripts_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    yield
    sys.modules.pop("check_right_half", None)


def test_set_dihedral_rotates_only_the_far_side_rigidly():
    from check_right_half import set_dihedral

    from coarseflow.analysis.observables import dihedral

    # a zig-zag chain 0-1-2-3-4 with a branch 5 on atom 1 and 6 on atom 3
    p = np.array(
        [
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [1.3, 0.8, 0.5],
            [2.2, 1.0, 0.9],
            [-0.7, -0.5, 0.3],
            [0.9, 1.6, 0.2],
        ]
    )
    bonds = [(0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (3, 6)]
    for target in (-170.0, -60.0, 0.0, 75.0, 179.0):
        q = set_dihedral(p, bonds, (0, 1, 2, 3), target)
        assert np.degrees(float(dihedral(q, np.array([[0, 1, 2, 3]]))[0])) == pytest.approx(
            target, abs=1e-9
        )
        np.testing.assert_allclose(q[[0, 1, 2, 5]], p[[0, 1, 2, 5]], atol=1e-12)
        for side in ([2, 3, 4, 6], [0, 1, 2, 5]):  # each side keeps its shape
            d = np.linalg.norm(p[side][:, None] - p[side][None], axis=-1)
            e = np.linalg.norm(q[side][:, None] - q[side][None], axis=-1)
            np.testing.assert_allclose(e, d, atol=1e-12)


def test_conditional_c7ax_ratio_and_its_error_over_chains():
    from check_right_half import ALPHA_L, C7AX, _conditional_c7ax

    other = 0
    # chain 0: 3 alpha_L + 1 C7ax; chain 1: 2 + 2; each also one frame outside the right half
    labels = np.array(
        [[ALPHA_L, ALPHA_L], [ALPHA_L, ALPHA_L], [ALPHA_L, C7AX], [C7AX, C7AX], [other, other]]
    )
    ratio, err, right = _conditional_c7ax(labels)
    assert ratio == pytest.approx(3 / 8)
    # residuals n_c7ax - ratio n_right = -0.5, +0.5; sqrt(2 / 1 * 0.5) / 8
    assert err == pytest.approx(1 / 8)
    assert right == pytest.approx(8 / 10)


def test_set_dihedral_refuses_a_ring_bond():
    from check_right_half import set_dihedral

    p = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="ring"):
        set_dihedral(p, [(0, 1), (1, 2), (2, 3), (3, 0)], (0, 1, 2, 3), 30.0)
