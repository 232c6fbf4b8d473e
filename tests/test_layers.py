"""Imports point downward: no module of coarseflow imports one of a higher layer; and modules
stay small (at most MAX_LINES lines).

Every module under src/coarseflow is parsed with ``ast`` (not imported), and every import of
``coarseflow.*`` in it counts: at the top, inside functions, under ``TYPE_CHECKING``, relative
ones. ``from coarseflow.pkg import name`` is an import of ``coarseflow.pkg.name`` when that is
a module, else of ``coarseflow.pkg``. The layers are those of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "coarseflow"

# Bottom to top. A module may import its own layer and the layers below it. A module belongs to
# the entry that is the longest prefix of its name (coarseflow.analysis.evaluation is
# application, the rest of coarseflow.analysis is analysis); a new top-level module has to be
# placed here.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "coarseflow.errors",
            "coarseflow.checks",
            "coarseflow.units",
            "coarseflow.data",
            "coarseflow.progress",
        ),
    ),
    # physics and numerics that know no target and no model
    (
        "ground",
        (
            "coarseflow.forcefield",
            "coarseflow.partition",
            "coarseflow.samplers",
            "coarseflow.tempering",
            "coarseflow.optim",
            "coarseflow.parallel",
            "coarseflow.triangular",
        ),
    ),
    # what is sampled and what samples it: a molecule's X is a model.internal Z-matrix, and
    # model.flow.make_flow reads a target's box; so the two share a layer
    ("targets and models", ("coarseflow.targets", "coarseflow.model")),
    ("estimators", ("coarseflow.objectives", "coarseflow.fab", "coarseflow.predict")),
    ("training", ("coarseflow.training",)),
    # arrays in, numbers and figures out; reports per target type
    ("analysis", ("coarseflow.analysis",)),
    # files, run directories, configs, commands; nothing below imports them
    (
        "application",
        (
            "coarseflow.runs",
            "coarseflow.run_folder",
            "coarseflow.atomic_files",
            "coarseflow.ladder_labels",
            "coarseflow.checkpointing",
            "coarseflow.config",
            "coarseflow.workflow",
            "coarseflow.run_training",
            "coarseflow.sample_outputs",
            "coarseflow.python_runs",
            "coarseflow.analysis.evaluation",
            "coarseflow.report",
            "coarseflow.reference",
            "coarseflow.cli",
            "coarseflow.__main__",
        ),
    ),
)
# the public namespace (coarseflow/__init__.py) sits on top of everything
FACADE = "coarseflow"

# Upward imports that remain in files whose owners are moving them, as (importer, imported)
# module pairs. The test fails on any upward import not listed here, and on any entry that no
# longer occurs: this set can only shrink. Empty: no upward import is left.
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()

# Small modules with one job each: none longer than this (docs/architecture.md).
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index into LAYERS (the facade: above all of them)."""
    if module == FACADE:
        return len(LAYERS)
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    if index is None:
        raise LookupError(
            f"{module} is in no layer: place it in tests/test_layers.py LAYERS "
            "and in docs/architecture.md"
        )
    return index


def _is_package(module: str) -> bool:
    return MODULES.get(module) is not None and MODULES[module].name == "__init__.py"


def imports_of(module: str, source: str | None = None) -> set[str]:
    """The coarseflow modules that ``module`` imports anywhere in its source (default: its
    file's text)."""
    if source is None:
        source = MODULES[module].read_text(encoding="utf-8")
    tree = ast.parse(source)
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                found.add(sub if sub in MODULES else origin)
    return {name for name in found if name == FACADE or name.startswith(FACADE + ".")}


def upward_imports() -> set[tuple[str, str]]:
    return {
        (module, imported)
        for module in MODULES
        for imported in imports_of(module)
        if imported in MODULES and layer_of(imported) > layer_of(module)
    }


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_the_import_graph_sees_every_kind_of_import():
    """The parser resolves imports inside functions and under TYPE_CHECKING, relative ones,
    and from-imports of modules and of names; an upward one among them is one."""
    source = """
from typing import TYPE_CHECKING
from coarseflow import checks
from coarseflow.samplers import langevin
from .. import fab as _fab
from ..model.flow import FlowSettings
if TYPE_CHECKING:
    from coarseflow.targets.base import AbstractTarget
def save():
    import coarseflow.runs
"""
    found = imports_of("coarseflow.training.step", source)
    assert found == {
        "coarseflow.checks",
        "coarseflow.samplers.langevin",
        "coarseflow.fab",
        "coarseflow.model.flow",
        "coarseflow.targets.base",
        "coarseflow.runs",
    }
    assert [m for m in sorted(found) if layer_of(m) > layer_of("coarseflow.training.step")] == [
        "coarseflow.runs"
    ]
    # in a function
    assert "coarseflow.analysis.evaluation" in imports_of("coarseflow.cli.commands")


def test_no_module_imports_a_higher_layer():
    upward = upward_imports()
    names = [name for name, _ in LAYERS]

    def describe(pairs):
        return "\n".join(
            f"  {a} ({names[layer_of(a)]}) imports {b} "
            f"({'the public namespace' if b == FACADE else names[layer_of(b)]})"
            for a, b in sorted(pairs)
        )

    new = upward - KNOWN_UPWARD
    assert not new, "imports that point up the layers (docs/architecture.md):\n" + describe(new)
    gone = KNOWN_UPWARD - upward
    assert not gone, "KNOWN_UPWARD entries that no longer occur; remove them:\n" + describe(gone)


def line_counts() -> dict[str, int]:
    """Lines of every module under src/coarseflow, by its path relative to it."""
    return {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in MODULES.values()
    }


def test_no_module_is_longer_than_max_lines():
    counts = line_counts()
    long = sorted(path for path, n in counts.items() if n > MAX_LINES)
    assert not long, f"modules longer than {MAX_LINES} lines; split them by job:\n" + "\n".join(
        f"  {path}: {counts[path]} lines" for path in long
    )
