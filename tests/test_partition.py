import numpy as np
import pytest

from coarseflow.errors import ConfigError
from coarseflow.partition import Partition


def test_split_merge_round_trip():
    p = Partition(5, (3, 0), (1, 4, 2))
    x = np.arange(5.0) * 10
    X, Y = p.split(x)
    np.testing.assert_array_equal(X, [30.0, 0.0])
    np.testing.assert_array_equal(Y, [10.0, 40.0, 20.0])
    np.testing.assert_array_equal(p.merge(X, Y), x)
    batch = np.random.default_rng(0).normal(size=(7, 5))
    np.testing.assert_array_equal(p.merge(*p.split(batch)), batch)
    assert (p.n_x, p.n_y) == (2, 3)


def test_from_x():
    p = Partition.from_x(4, [2])
    assert p.y_indices == (0, 1, 3)


@pytest.mark.parametrize(
    "x, y, message",
    [
        ((), (0, 1), "x_indices is empty"),
        ((0, 1), (), "y_indices is empty"),
        ((0, 1), (1, 2), r"\[1\] are in both"),
        ((0,), (1,), r"\[2\] are in neither"),
        ((0, 5), (1, 2), "outside"),
        ((0, 0), (1, 2), "repeats"),
    ],
)
def test_invalid_partitions(x, y, message):
    with pytest.raises(ConfigError, match=message):
        Partition(3, x, y)
