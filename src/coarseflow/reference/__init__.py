"""Ground truth for a molecule without trusting the flow: ``coarseflow reference CONFIG``.

All-atom replica exchange (parallel tempering) with BAOAB Langevin dynamics on the pure-JAX force
field (:mod:`coarseflow.samplers.replica_exchange`), many independent ladders in parallel, on GPU
when there is one. Plain Langevin dynamics at the target temperature does not cross the phi ~ 0
barrier of alanine dipeptide on any affordable time scale (a 100 ns OpenMM run never reached
alpha_L); exchanges with hotter rungs carry configurations over it.

Modules, one job each:

* ``settings``: :class:`ReferenceSettings` (the [reference] table), the config's tables;
* ``molecule``: :class:`ReferenceMolecule`, the [target] molecule as an OpenMM System, minimised,
  with its pure-JAX force field and what is recorded of a frame;
* ``statistics``: every residue's basin populations with chain and block errors (by
  :func:`coarseflow.analysis.basin_statistics.reference_populations`), the left-half statistics;
* ``openmm_check``: the same System run by OpenMM's integrator, compared with the JAX run;
* ``npz``: the reference file, written atomically, read without pickles;
* ``command``: :func:`run_reference` and ``coarseflow reference`` (:func:`reference_main`).
"""

from coarseflow.reference.command import format_summary, reference_main, run_reference
from coarseflow.reference.molecule import ReferenceMolecule, openmm_minimise
from coarseflow.reference.npz import NPZ_KEYS, SHIPPED_REFERENCE, load_reference
from coarseflow.reference.openmm_check import openmm_check
from coarseflow.reference.settings import QUICK_SETTINGS, ReferenceSettings
from coarseflow.reference.statistics import COMPARED, block_mean

__all__ = [
    "COMPARED",
    "NPZ_KEYS",
    "QUICK_SETTINGS",
    "SHIPPED_REFERENCE",
    "ReferenceMolecule",
    "ReferenceSettings",
    "block_mean",
    "format_summary",
    "load_reference",
    "openmm_check",
    "openmm_minimise",
    "reference_main",
    "run_reference",
]
