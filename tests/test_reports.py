"""Reports per target type: report_for picks one by the target's class hierarchy; a target
without exact references gets only what evaluation gives every target."""

import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.analysis.reports import (
    DoubleWellReport,
    GaussianMixtureReport,
    GenericReport,
    ManyWellReport,
    report_for,
)
from coarseflow.partition import Partition
from coarseflow.targets import DoubleWell, EnergyTarget, GaussianMixture, ManyWell


class _Samples:
    def __init__(self, X, log_weights):
        self.X, self.log_weights = X, log_weights


def test_report_for_follows_the_target_class():
    assert type(report_for(DoubleWell())) is DoubleWellReport
    assert type(report_for(GaussianMixture())) is GaussianMixtureReport
    assert type(report_for(ManyWell())) is ManyWellReport

    class Shifted(DoubleWell):  # a subclass keeps its base's report
        pass

    assert type(report_for(Shifted())) is DoubleWellReport
    energy = EnergyTarget(lambda x: jnp.sum(x**2), Partition.from_x(2, [0]), lower=-1, upper=1)
    report = report_for(energy)
    assert type(report) is GenericReport and report.target is energy
    assert report.metrics(_Samples(np.zeros((3, 1)), np.zeros(3)), np.full(3, 1 / 3), 1.0) == {}
    assert report.figures("unused", {1.0: None}) == []


def test_double_well_report_counts_the_right_well():
    target = DoubleWell()
    X = np.array([[-1.0], [1.0], [1.2], [0.8]])
    w = np.array([0.4, 0.2, 0.2, 0.2])
    out = report_for(target).metrics(_Samples(X, np.log(w)), w, 1.0)
    assert out["right_well_mass_raw"] == 0.75
    assert out["right_well_mass_reweighted"] == pytest.approx(0.6)
    assert out["right_well_error_raw"] == abs(0.75 - out["right_well_mass_exact"])
