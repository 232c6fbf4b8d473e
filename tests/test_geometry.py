"""The one dihedral (and bond angle) of coarseflow: forcefield.geometry, against the forms that
model/internal.py and analysis/observables.py computed before they used it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.analysis.observables import dihedral
from coarseflow.forcefield.geometry import angles, dihedrals


def _old_dihedral(p0, p1, p2, p3, xp):
    """The form of observables.dihedral and internal._dihedral before the merge: cross products
    of (..., 3) arrays."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    c1, c2 = xp.cross(b2, b3), xp.cross(b1, b2)
    y = xp.sum(b1 * c1, axis=-1) * xp.sqrt(xp.sum(b2 * b2, axis=-1))
    return xp.arctan2(y, xp.sum(c1 * c2, axis=-1))


def _old_angle(p, q, r, xp):
    """internal._angle before the merge."""
    u, v = p - q, r - q
    w = xp.cross(u, v)
    return xp.arctan2(xp.sqrt(xp.sum(w * w, axis=-1)), xp.sum(u * v, axis=-1))


QUADS = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [4, 0, 1, 2], [1, 4, 3, 2]])


def _positions(seed=0, batch=(5,)):
    return np.random.default_rng(seed).normal(size=batch + (5, 3))


def test_numpy_dihedral_is_the_old_one_bit_for_bit():
    pos = _positions()
    new = dihedrals(pos, QUADS)
    assert isinstance(new, np.ndarray) and new.dtype == np.float64 and new.shape == (5, 4)
    old = _old_dihedral(*(pos[:, QUADS[:, k]] for k in range(4)), np)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(dihedral(pos, QUADS), old)
    np.testing.assert_array_equal(dihedral(pos, QUADS[0]), old[:, 0])


def test_jax_dihedral_and_angle_match_the_old_forms():
    pos = jnp.asarray(_positions(1))
    new = jax.jit(lambda p: dihedrals(p, QUADS))(pos)
    assert isinstance(new, jax.Array) and new.shape == (5, 4)
    old = _old_dihedral(*(pos[:, QUADS[:, k]] for k in range(4)), jnp)
    np.testing.assert_allclose(np.asarray(new), np.asarray(old), rtol=1e-14, atol=1e-14)
    triples = QUADS[:, :3]
    np.testing.assert_allclose(
        np.asarray(angles(pos, triples)),
        np.asarray(_old_angle(*(pos[:, triples[:, k]] for k in range(3)), jnp)),
        rtol=1e-14,
        atol=1e-14,
    )


@pytest.mark.parametrize("xp", [np, jnp])
def test_dihedral_range_is_half_open_at_minus_pi(xp):
    """A planar trans quadruplet whose y is -0.0: arctan2 gives -pi, the range is (-pi, pi]."""
    pos = xp.asarray([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    old = _old_dihedral(*(pos[i] for i in range(4)), xp)
    got = dihedrals(pos, np.array([[0, 1, 2, 3]]))[0]
    assert abs(float(old)) == pytest.approx(np.pi) and float(got) == pytest.approx(np.pi)
    assert float(got) > 0


def test_dihedral_sign():
    """+90 degrees for a clockwise turn (as mdtraj, test_observables), either way along the
    chain, -90 for its mirror image."""
    pos = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    np.testing.assert_allclose(
        dihedrals(pos, np.array([[0, 1, 2, 3], [3, 2, 1, 0]])), [np.pi / 2, np.pi / 2], rtol=1e-15
    )
    mirror = pos * jnp.array([1.0, -1.0, 1.0])
    assert float(dihedrals(mirror, np.array([[0, 1, 2, 3]]))[0]) == pytest.approx(-np.pi / 2)
