"""TOML config -> typed settings. Every key is checked; errors name the section and key.

Sections: [target] (kind + its options), [model], [chains], [training], [tempering],
[prediction], [reference] (for `coarseflow reference`, molecules only).
See README.md for every key.
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coarseflow import checks
from coarseflow.errors import ConfigError
from coarseflow.model.conditional import ConditionalSettings
from coarseflow.model.flow import FlowSettings
from coarseflow.model.linear_map import check_linear_map
from coarseflow.predict.settings import PredictionSettings
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.tempering.config import schedule_from_config
from coarseflow.tempering.schedules import AbstractSchedule
from coarseflow.training.settings import TrainingSettings

SECTIONS = (
    "target",
    "model",
    "conditional",
    "chains",
    "training",
    "tempering",
    "prediction",
    "reference",
)


@dataclass(frozen=True)
class Config:
    """A config file's settings, checked: one field per [section] (the raw [target] table,
    turned into a target by ``build_target``), and ``raw``, the parsed TOML."""

    target: dict[str, Any]  # raw [target] table; build_target turns it into a Target
    model: FlowSettings
    conditional: ConditionalSettings
    chains: ChainSettings
    training: TrainingSettings
    tempering: AbstractSchedule
    prediction: PredictionSettings
    raw: dict[str, Any]  # the parsed TOML, written back into the run directory

    @property
    def reference(self) -> dict[str, Any]:
        """The raw [reference] table (settings of `coarseflow reference`, parsed there)."""
        return dict(self.raw.get("reference", {}))


def _check_value(section: str, key: str, value, annotation):
    """Return value converted to ``annotation`` (int, float, str, bool, tuple[...]) or raise."""
    where = f"[{section}] {key}"
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = typing.get_args(annotation)[0]
        return tuple(_check_value(section, key, v, inner) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(annotation)):
            return None
        return _check_value(section, key, value, args[0])
    if annotation is bool:
        return checks.boolean(where, value)
    if annotation is int:
        if not checks.is_int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if not checks.is_number(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def settings_from_table(cls, table: dict, section: str):
    """Build the settings dataclass / equinox Module ``cls`` from a TOML table, checking keys."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}]: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(
            f"[{section}] unknown key {unknown[0]!r}; expected one of: " + ", ".join(names)
        )
    kwargs = {k: _check_value(section, k, v, hints.get(k, Any)) for k, v in table.items()}
    return cls(**kwargs)


def _check_shape(raw) -> None:
    """Known sections, each a table; [target] present with a string ``kind``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected TOML tables, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"config: unknown section [{unknown[0]}]; expected: " + ", ".join(SECTIONS)
        )
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"[{section}]: expected a table ([{section}] and its keys), got "
                f"{section} = {checks.show(table)}"
            )
    if "kind" not in raw.get("target", {}):
        raise ConfigError(
            "config: [target] kind is required (double_well, gaussian_mixture, many_well, molecule)"
        )
    kind = raw["target"]["kind"]
    if not isinstance(kind, str):
        raise ConfigError(
            f'[target] kind: expected a string such as "double_well", got {checks.show(kind)}'
        )


def parse_config(raw: dict) -> Config:
    """A checked :class:`Config` from a parsed TOML dict; ConfigError names the first bad key.

    Every section is checked here, [target] (the target is built) and [reference] included,
    so that nothing fails after a run directory is created."""
    _check_shape(raw)
    config = Config(
        target=dict(raw["target"]),
        model=settings_from_table(FlowSettings, raw.get("model", {}), "model"),
        conditional=settings_from_table(
            ConditionalSettings, raw.get("conditional", {}), "conditional"
        ),
        chains=settings_from_table(ChainSettings, raw.get("chains", {}), "chains"),
        training=settings_from_table(TrainingSettings, raw.get("training", {}), "training"),
        tempering=schedule_from_config(raw.get("tempering", {"kind": "adaptive"})),
        prediction=settings_from_table(PredictionSettings, raw.get("prediction", {}), "prediction"),
        raw=raw,
    )
    target = build_target(config.target)  # validated now, not after training starts
    if "reference" in raw:
        from coarseflow.reference import ReferenceSettings

        settings_from_table(ReferenceSettings, raw["reference"], "reference")
    learned, objective = config.conditional.learned, config.training.objective
    if learned != (objective != "mean_force"):
        raise ConfigError(
            f"[training] objective = {objective!r} with [conditional] kind = "
            f"{config.conditional.kind!r}: "
            + (
                "joint, hybrid and fab train a learned q(Y|X); set "
                "[conditional] kind = 'gaussian' or 'flow'"
                if not learned
                else "mean_force does not "
                "train the conditional; use objective = 'joint', 'hybrid' or 'fab'"
            )
        )
    check_linear_map(
        config.conditional.linear_map,
        config.training.objective,
        target,
        config.prediction.refine_steps,
    )
    if config.prediction.polish_steps and (not learned or config.conditional.linear_map):
        raise ConfigError(
            "[prediction] polish_steps: needs a learned q(Y|X) without a linear map ([conditional] "
            "kind = 'gaussian' or 'flow', linear_map = false): it moves q(Y|X) toward the "
            f"unmapped p(Y|X); got kind = {config.conditional.kind!r}, linear_map = "
            f"{str(config.conditional.linear_map).lower()}"
        )
    return config


def load_config(path) -> Config:
    """The TOML config file ``path``, every key checked, as typed settings (:class:`Config`).

    [target] file paths are made absolute (relative ones: to the working directory); a missing
    file, bad TOML or a bad value raises :class:`~coarseflow.errors.ConfigError` naming the
    file or the [section] key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        raw = tomllib.loads(read_text_file(path, "config file"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML ({e})") from None
    return parse_config(absolute_paths(raw))


MAX_CONFIG_BYTES = 1 << 20


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ConfigError (naming ``what`` and the file) for a file that
    cannot be read, is larger than a config could be, or is not UTF-8 text (binary, UTF-16)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = (
            " (it looks like UTF-16: save it as UTF-8)"
            if data[:2] in (b"\xff\xfe", b"\xfe\xff")
            else ""
        )
        raise ConfigError(
            f"{what} {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
            f"position {e.start}){hint}"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{what} {path}: not a text file (it contains NUL bytes)")
    return text.removeprefix("\ufeff")


PATH_KEYS = ("pdb", "reference")  # [target] keys that may name files


def absolute_paths(raw: dict) -> dict:
    """[target] file paths made absolute (relative ones are relative to the working directory),
    so that the copy of the config in a run directory works from anywhere. Built-in names
    (e.g. pdb = "alanine_dipeptide") are not files and stay as they are."""
    if not isinstance(raw.get("target"), dict):
        return raw  # parse_config says what is wrong with it
    target = dict(raw["target"])
    for key in PATH_KEYS:
        value = target.get(key)
        if isinstance(value, str) and Path(value).is_file():
            target[key] = str(Path(value).resolve())
    return {**raw, "target": target}


def target_classes() -> dict[str, type]:
    from coarseflow.targets import DoubleWell, GaussianMixture, ManyWell

    kinds = {"double_well": DoubleWell, "gaussian_mixture": GaussianMixture, "many_well": ManyWell}
    try:
        from coarseflow.targets.molecule import Molecule
    except ImportError:  # openmm / mdtraj not installed: molecules unavailable
        return kinds
    return {**kinds, "molecule": Molecule}


def build_target(table: dict):
    """A Target from a [target] table: ``kind`` plus the keyword arguments of that target."""
    table = dict(table)
    kind = table.pop("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"[target] kind: expected a string, got {checks.show(kind)}")
    classes = target_classes()
    if kind not in classes:
        raise ConfigError(f"[target] kind: expected one of {sorted(classes)}, got {kind!r}")
    factory = classes[kind]
    params = inspect.signature(factory).parameters
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    unknown = sorted(set(table) - set(params))
    if unknown:
        raise ConfigError(
            f"[target] unknown key {unknown[0]!r} for kind {kind!r}; expected one "
            "of: " + ", ".join(["kind", *params])
        )
    kwargs = {k: _check_value("target", k, v, hints.get(k, Any)) for k, v in table.items()}
    return factory(**kwargs)


def to_toml(raw: dict) -> str:
    """Write a config dict (tables of scalars and lists) back as TOML."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(i) for i in v) + "]"
        return repr(v)

    lines = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)
