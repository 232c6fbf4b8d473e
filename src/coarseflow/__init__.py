"""coarseflow: coarse-grained Boltzmann generators trained without data along a tempering ladder.

``import coarseflow as cf`` gives the names a user needs; each is imported from its module on
first use, so ``import coarseflow`` stays cheap and a molecule's OpenMM is loaded only for
``cf.Molecule``:

    target = cf.EnergyTarget(u, cf.Partition.from_x(2, [0]), lower=-2.5, upper=2.5)
    flow = cf.make_flow(jax.random.key(0), target, cf.FlowSettings())
    result = cf.train(target, flow, cf.Geometric(), cf.TrainingSettings(), cf.ChainSettings())
    samples = cf.draw_samples(jax.random.key(1), target, result.flow, 1.0,
                              cf.PredictionSettings(), n=1000)
    cf.ess(samples.log_weights)

The modules themselves (``coarseflow.training``, ``coarseflow.samplers``, ...) hold the rest.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_EXPORTS = {
    # targets: what is sampled
    "AbstractTarget": "coarseflow.targets",
    "Partition": "coarseflow.partition",
    "EnergyTarget": "coarseflow.targets",
    "DoubleWell": "coarseflow.targets",
    "GaussianMixture": "coarseflow.targets",
    "ManyWell": "coarseflow.targets",
    "Molecule": "coarseflow.targets.molecule",
    # settings and schedules
    "FlowSettings": "coarseflow.model.flow",
    "ConditionalSettings": "coarseflow.model.conditional",
    "ChainSettings": "coarseflow.samplers.conditional",
    "TrainingSettings": "coarseflow.training.settings",
    "PredictionSettings": "coarseflow.predict.settings",
    "Adaptive": "coarseflow.tempering.adaptive",
    "Geometric": "coarseflow.tempering.schedules",
    "Linear": "coarseflow.tempering.schedules",
    "Explicit": "coarseflow.tempering.schedules",
    # build, train, sample
    "make_flow": "coarseflow.model.flow",
    "make_conditional": "coarseflow.model.conditional",
    "train": "coarseflow.training.ladder",
    "draw_samples": "coarseflow.predict.draw",
    "refine": "coarseflow.predict.refine",
    # how good the samples are
    "ess": "coarseflow.analysis.metrics",
    "pareto_k": "coarseflow.analysis.metrics",
    "log_partition_estimate": "coarseflow.predict.draw",
    # what the command line does, from Python
    "load_config": "coarseflow.config",
    "train_from_config": "coarseflow.run_training",
    "load_run": "coarseflow.workflow",
    "sample_run": "coarseflow.sample_outputs",
    "run_config": "coarseflow.python_runs",
    "train_into_run": "coarseflow.python_runs",
    "evaluate_run": "coarseflow.analysis.evaluation",
    "ConfigError": "coarseflow.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from coarseflow.run_folder import coarseflow_version

        return coarseflow_version()
    if name not in _EXPORTS:
        raise AttributeError(f"module 'coarseflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
