"""Targets: reduced energies u(x) split into slow X and fast Y, with exact references."""

from coarseflow.targets.base import AbstractTarget
from coarseflow.targets.double_well import DoubleWell
from coarseflow.targets.energy import EnergyTarget
from coarseflow.targets.gaussian_mixture import GaussianMixture
from coarseflow.targets.many_well import ManyWell

__all__ = ["AbstractTarget", "DoubleWell", "EnergyTarget", "GaussianMixture", "ManyWell"]
