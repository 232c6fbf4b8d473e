"""A run directory from Python objects: what ``coarseflow evaluate`` / ``sample`` / ``report``
and :func:`coarseflow.workflow.load_run` open, for a model assembled in Python.

:func:`run_config` maps a built-in target, the settings and the schedule back to the
:class:`~coarseflow.config.Config` a config file of them would give (checked by parsing it
back); :func:`train_into_run` trains the given flow through the CLI's own recorder
(:func:`coarseflow.checkpointing.train_into`: metrics.jsonl, a checkpoint per beta, the run
claimed and locked) after writing that config as the run's config.toml. A target the CLI could
not rebuild from a ``[target]`` table (an EnergyTarget's Python energy) is refused in one line.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import jax
import numpy as np

from coarseflow.checkpointing import train_into
from coarseflow.config import (
    Config,
    absolute_paths,
    build_target,
    load_config,
    parse_config,
    target_classes,
)
from coarseflow.errors import ConfigError
from coarseflow.model.conditional import ConditionalSettings
from coarseflow.model.flow import FlowSettings, split_trainable
from coarseflow.parallel import process_count
from coarseflow.predict.settings import PredictionSettings
from coarseflow.run_folder import config_hash
from coarseflow.runs import RunDir
from coarseflow.tempering.config import schedule_to_config
from coarseflow.training.ladder import TrainResult
from coarseflow.workflow import build_model, check_start, record_config

__all__ = ["run_config", "train_into_run"]

BUILT_IN = "double_well, gaussian_mixture, many_well, molecule"
EVALUATE_IN_PYTHON = "train it with cf.train and evaluate it from Python (cf.draw_samples, cf.ess)"


def run_config(
    target,
    schedule,
    training,
    chains,
    *,
    flow_settings: FlowSettings = FlowSettings(),
    conditional_settings: ConditionalSettings | None = None,
    prediction: PredictionSettings = PredictionSettings(),
) -> Config:
    """The :class:`~coarseflow.config.Config` of these objects: [target] from a built-in
    target (its constructor's arguments, checked to rebuild it), [model] from
    ``flow_settings`` (its seed: the key of ``make_flow``), [conditional], [chains],
    [training], [tempering] from ``schedule``, [prediction]; every key written out.
    ``conditional_settings`` None: the chains' (``ConditionalSettings()``).

    ``coarseflow.config.to_toml(config.raw)`` is its config file. Refused with one line
    (ConfigError) for a target that no ``[target]`` table describes (an EnergyTarget, a
    subclass of a built-in one) and for settings that do not come back unchanged."""
    if conditional_settings is None:
        conditional_settings = ConditionalSettings()
    raw = {
        "target": target_table(target),
        "model": settings_table(flow_settings),
        "conditional": settings_table(conditional_settings),
        "chains": settings_table(chains),
        "training": settings_table(training),
        "tempering": schedule_to_config(schedule),
        "prediction": settings_table(prediction),
    }
    config = parse_config(raw)
    for section, given in (
        ("model", flow_settings),
        ("conditional", conditional_settings),
        ("chains", chains),
        ("training", training),
        ("tempering", schedule),
        ("prediction", prediction),
    ):
        parsed = getattr(config, section)
        if parsed != given:
            raise ConfigError(f"[{section}]: {given!r} comes back from its table as {parsed!r}")
    return config


def train_into_run(
    out,
    target,
    flow,
    schedule,
    training,
    chains,
    *,
    conditional=None,
    flow_settings: FlowSettings = FlowSettings(),
    conditional_settings: ConditionalSettings | None = None,
    prediction: PredictionSettings = PredictionSettings(),
    resume: bool = False,
    progress: bool = True,
    max_betas: int | None = None,
    mesh=None,
) -> TrainResult:
    """:func:`coarseflow.train` of these objects, recorded in run directory ``out`` as
    ``coarseflow train`` records it: config.toml (:func:`run_config`), metrics.jsonl, a
    checkpoint per beta, the run's marker and lock. ``coarseflow evaluate / sample / report
    out``, ``cf.load_run(out)`` and ``coarseflow train out/config.toml --out out --resume``
    then open it as a run of the command line.

    ``flow`` (and the learned ``conditional``) must be what the run rebuilds from its config:
    ``make_flow(jax.random.key(flow_settings.seed), target, flow_settings)`` (trained or not:
    only the trainable parameters are checkpointed) and ``make_conditional(jax.random.key(
    conditional_settings.seed), target, conditional_settings)``; a flow made from another key
    or other settings is refused in one line. ``conditional_settings`` (default: those of
    the conditional's kind, chains when it is None). ``out`` must be new, empty or a run of
    this same config; its checkpoints are refused unless ``resume`` (continue from the newest
    intact one). ``progress``, ``max_betas``, ``mesh``: :func:`coarseflow.train`'s."""
    if process_count() > 1:
        raise ConfigError(
            "train_into_run: one process only; for several, write the config "
            "(to_toml(run_config(...).raw)) and train with cf.train_from_config"
        )
    if conditional_settings is None:
        conditional_settings = _settings_of(conditional)
    config = run_config(
        target,
        schedule,
        training,
        chains,
        flow_settings=flow_settings,
        conditional_settings=conditional_settings,
        prediction=prediction,
    )
    check_model(config, target, flow, conditional)
    run = RunDir(out)
    run.claim(config_hash(config.raw), lambda path: config_hash(load_config(path).raw))
    try:
        check_start(config, run, resume)
        record_config(config, run, resume)
        return train_into(
            run,
            target,
            flow,
            schedule,
            training,
            chains,
            conditional=conditional,
            resume=resume,
            prediction=prediction,
            progress=progress,
            max_betas=max_betas,
            mesh=mesh,
        )
    finally:
        run.release()


def _settings_of(conditional) -> ConditionalSettings:
    """The default ConditionalSettings of ``conditional``'s kind (None: the chains)."""
    if conditional is None:
        return ConditionalSettings()
    kind = "gaussian" if getattr(conditional, "spline", None) is None else "flow"
    linear_map = getattr(conditional, "linear_map", None) is not None
    return ConditionalSettings(kind=kind, linear_map=linear_map)


# ------------------------------------------------------------------------------------ tables


def settings_table(settings) -> dict:
    """A settings dataclass (or equinox Module) as its TOML table: every init field, by its
    annotation (float, int, bool, str, lists of them); None, which TOML lacks, left out."""
    hints = typing.get_type_hints(type(settings))
    table = {}
    for field in dataclasses.fields(settings):
        if field.init:
            value = getattr(settings, field.name)
            if value is not None:
                table[field.name] = _toml_value(value, hints.get(field.name, typing.Any))
    return table


def _toml_value(value, annotation=typing.Any):
    """``value`` as a TOML scalar or list: Python bool / int / float / str (NumPy and JAX
    scalars and arrays included), as the annotation says where it names one."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation, origin = args[0], typing.get_origin(args[0])
    if origin in (tuple, list) or isinstance(value, list | tuple | np.ndarray | jax.Array):
        inner = typing.get_args(annotation)[0] if origin in (tuple, list) else typing.Any
        items = np.asarray(value).tolist() if hasattr(value, "shape") else value
        return [_toml_value(v, inner) for v in items]
    if annotation in (bool, int, float, str):
        return annotation(value)
    if hasattr(value, "item"):  # a NumPy / JAX scalar
        value = value.item()
    if isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(f"a config cannot hold {type(value).__name__} {value!r}")


def target_table(target) -> dict:
    """The [target] table that builds ``target`` again (checked by building it: equal up to
    the rounding of its dtype); ConfigError, one line, where none does."""
    kind = next((k for k, cls in target_classes().items() if type(target) is cls), None)
    if kind is None:
        name = type(target).__name__
        why = (
            "its energy is a Python function, which a config's [target] table cannot hold"
            if name == "EnergyTarget"
            else f"it is not a built-in target ({BUILT_IN})"
        )
        raise ConfigError(
            f"{name}: no run directory for it: {why}, so `coarseflow evaluate` / `sample` "
            f"could not rebuild it; {EVALUATE_IN_PYTHON}"
        )
    if kind == "molecule":
        table = _molecule_table(target)
    else:
        hints = typing.get_type_hints(type(target).__init__)
        params = inspect.signature(type(target)).parameters
        table = {"kind": kind}
        for name in params:
            value = getattr(target, name, None)
            if value is not None:
                table[name] = _toml_value(value, hints.get(name, typing.Any))
    try:
        rebuilt = build_target(table)
    except ConfigError as err:
        raise ConfigError(f"[target] {table}: does not build ({err})") from None
    if not _same_target(rebuilt, target):
        raise ConfigError(
            f"{type(target).__name__}: the [target] table {table} builds another target"
            + (" (made with another forcefield?)" if kind == "molecule" else "")
            + "; write its [target] in a config file and train with cf.train_from_config"
        )
    return absolute_paths({"target": table})["target"]  # as load_config reads a file


def _molecule_table(molecule) -> dict:
    """A Molecule's [target]: its structure file (a built-in one by name), CG selection,
    gauge atoms, temperature, box margin and reference; the force field its default (a
    Molecule keeps no file names: another one fails the rebuild's comparison)."""
    from coarseflow.targets.molecule import registry

    info = molecule.info
    pdb = info.pdb_path
    for name in registry.BUILTIN_MOLECULES:
        if Path(registry.resolve_pdb(name)[0]).resolve() == Path(pdb).resolve():
            pdb = name
    table = {
        "kind": "molecule",
        "pdb": pdb,
        "cg_selection": info.cg_selection,
        "fixed_atoms": [int(i) for i in molecule.fixed_atoms],
        "temperature": float(molecule.temperature),
        "box_margin": float(molecule.box_margin),
    }
    if info.reference_path is not None:
        table["reference"] = str(info.reference_path)
    return table


def _same_target(a, b) -> bool:
    """Same structure and static data; arrays equal up to a few units of their precision."""
    (la, ta), (lb, tb) = jax.tree.flatten(a), jax.tree.flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        rtol = 4 * np.finfo(x.dtype).eps if np.issubdtype(x.dtype, np.floating) else 0
        if not np.allclose(x, y, rtol=rtol, atol=0):
            return False
    return True


# ------------------------------------------------------------------------- the model's check


def check_model(config: Config, target, flow, conditional) -> None:
    """Refuse, in one line, a (flow, conditional) whose structure or fixed part (permutations,
    box) differs from what a run of ``config`` rebuilds (``workflow.build_model``): its
    checkpoints would load into another model."""
    expected = build_model(config, target)
    for what, given, built in (
        ("flow", flow, expected[0]),
        ("conditional", conditional, expected[1]),
    ):
        problem = _model_difference(given, built)
        if problem is None:
            continue
        if what == "flow":
            how = "make_flow(jax.random.key(flow_settings.seed), target, flow_settings)"
            settings = f"flow_settings = {config.model!r}"
        else:
            how = (
                "make_conditional(jax.random.key(conditional_settings.seed), target, "
                "conditional_settings)"
            )
            settings = f"conditional_settings = {config.conditional!r}"
        raise ConfigError(
            f"{what}: not the one its run directory rebuilds ({problem}): build it as {how} "
            f"with the settings passed ({settings})"
        )


def _model_difference(given, built) -> str | None:
    """What differs between two models' trainable shapes and fixed parts; None: nothing."""
    if (given is None) != (built is None):
        return "a learned conditional with the chains' settings, or none with learned ones"
    (params_a, static_a), (params_b, static_b) = split_trainable(given), split_trainable(built)
    shapes = [jax.tree.map(lambda a: (a.shape, a.dtype), p) for p in (params_a, params_b)]
    if jax.tree.structure(params_a) != jax.tree.structure(params_b) or shapes[0] != shapes[1]:
        return "other layers or sizes"
    (la, ta), (lb, tb) = jax.tree.flatten(static_a), jax.tree.flatten(static_b)
    if ta != tb or not all(_same_leaf(x, y) for x, y in zip(la, lb, strict=True)):
        return "other fixed parts: another key's permutations, or another box"
    return None


def _same_leaf(x, y) -> bool:
    """Equal fixed leaves: arrays by value, functions by name (flowjax makes a new closure
    for every flow), the rest by ==."""
    if callable(x) and callable(y) and not hasattr(x, "shape"):
        name = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
        return x is y or name(x) == name(y)
    if hasattr(x, "shape") or hasattr(y, "shape"):
        x, y = np.asarray(x), np.asarray(y)
        return x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
    return bool(x == y)
