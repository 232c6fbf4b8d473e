"""The command line's values checked before anything is loaded or written: ranges, exclusive
flags, output paths a command can create or replace (one line each, ConfigError)."""

from __future__ import annotations

from pathlib import Path

from coarseflow.errors import ConfigError

SAMPLE_SUFFIXES = (".npz", ".pdb", ".dcd")


def _check_output(flag: str, value, *, directory: bool, suffixes: tuple[str, ...] = ()) -> None:
    """An output path the command can create or replace: not empty, no regular file among its
    parents, and (a directory) not an existing non-directory / (a file) not an existing
    directory or device, ending in one of ``suffixes``."""
    if value is None:
        return
    if not str(value).strip():
        raise ConfigError(f"{flag}: expected a path, got {value!r}")
    path = Path(value)
    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{flag} {path}: {parent} is not a directory")
    if directory and path.exists() and not path.is_dir():
        raise ConfigError(
            f"{flag} {path}: exists and is not a directory (a run directory is a folder)"
        )
    if not directory and path.is_dir():
        raise ConfigError(
            f"{flag} {path}: is a directory; expected a file name"
            + (" ending in " + " or ".join(suffixes) if suffixes else "")
        )
    if not directory and path.exists() and not path.is_file():
        raise ConfigError(f"{flag} {path}: exists and is not a regular file")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: expected a file name ending in " + " or ".join(suffixes))


def _check_args(args) -> None:
    """Every value of the command line in range, before anything is loaded or written."""
    from coarseflow import checks

    if getattr(args, "n", None) is not None:
        checks.integer("-n", args.n, 1)
    if getattr(args, "seed", None) is not None:
        checks.seed("--seed", args.seed)
    if getattr(args, "beta", None) is not None:
        checks.number("--beta", args.beta, 0.0, 1.0)
    if getattr(args, "resume", False) and getattr(args, "init", None) is not None:
        raise ConfigError(
            "--resume and --init: choose one (a resumed run continues from its "
            "own checkpoints; --init starts a new run from another run's flow)"
        )
    if args.command in ("train", "demo"):
        _check_output("--out", args.out, directory=True)
    elif args.command == "sample":
        for output in args.output or ():
            _check_output("-o", output, directory=False, suffixes=SAMPLE_SUFFIXES)
    elif args.command == "reference":
        _check_output("-o", args.output, directory=False, suffixes=(".npz",))
    elif args.command == "build":
        _check_output("-o", args.output, directory=False, suffixes=(".pdb",))
