"""The command line, ``coarseflow`` (pyproject's [project.scripts]: coarseflow.cli:main):
``main``, and what it sets up before a command runs (XLA's log level, the compilation cache,
coarseflow's warnings as one line).

parser      build_parser: the subcommands, their flags and handlers (its docstring: --help's)
validation  the command line's values checked before anything is loaded or written
commands    what each subcommand does
output      what the commands print: the device line, an evaluation's summary
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from coarseflow.cli.parser import _UsageError, build_parser
from coarseflow.cli.validation import _check_args
from coarseflow.errors import ConfigError

# XLA's C++ logging (not Python's) writes to stderr, e.g. "Very slow compile? If you want to
# file a bug ..." at LOG(ERROR) during a molecule's minutes-long compile: noise to a user, who
# sees the compile stage's own line instead. Its level is read from the environment when XLA
# logs first, so it is set here, before anything imports jax; TF_CPP_MIN_LOG_LEVEL=0 in the
# environment shows every line again (errors that matter reach Python as exceptions).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


CACHE_MAX_BYTES = 4 << 30  # the compilation cache's size; its least recently used go first


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk between processes, in $COARSEFLOW_JAX_CACHE (default
    ~/.cache/coarseflow/jax; empty: off). Without it, every `sample` or `evaluate` of a molecule
    compiles again what `train` compiled already. A size limit makes JAX lock the folder on
    every read and write (without one it writes entries unlocked, which a second process, such
    as another data-parallel rank, can read half-written)."""
    default = Path.home() / ".cache" / "coarseflow" / "jax"
    path = os.environ.get("COARSEFLOW_JAX_CACHE", str(default))
    if path:
        import jax

        _drop_entries_without_access_time(Path(path))
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def _drop_entries_without_access_time(folder: Path) -> None:
    """Delete cached programs that have no access-time file beside them. coarseflow before the
    size limit wrote none, and JAX's eviction fails on such an entry, warning at every write
    after it; the dropped programs are compiled again once."""
    for entry in folder.glob("*-cache"):
        if not entry.with_name(entry.name[: -len("-cache")] + "-atime").exists():
            entry.unlink(missing_ok=True)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """coarseflow's own warnings as one line, like its errors; others as Python prints them."""
    if category.__module__.startswith("coarseflow."):
        return f"coarseflow: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"coarseflow: error: {e}", file=sys.stderr)
        return 2
    enable_compilation_cache()
    from coarseflow.forcefield.trust import allow_forcefield_scripts

    allow_forcefield_scripts(getattr(args, "allow_forcefield_scripts", False))
    try:
        _check_args(args)
        return args.func(args)
    except ConfigError as e:
        print(f"coarseflow: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"coarseflow: error: {e.filename}: file not found", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "coarseflow: interrupted; checkpoints written so far are kept (use --resume)",
            file=sys.stderr,
        )
        return 130
