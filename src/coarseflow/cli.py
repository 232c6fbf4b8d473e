"""coarseflow train | sample | evaluate | reference | demo | build | inspect.

User errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import warnings
from pathlib import Path

from coarseflow.errors import ConfigError

# XLA's C++ logging (not Python's) writes to stderr, e.g. "Very slow compile? If you want to
# file a bug ..." at LOG(ERROR) during a molecule's minutes-long compile: noise to a user, who
# sees the compile stage's own line instead. Its level is read from the environment when XLA
# logs first, so it is set here, before anything imports jax; TF_CPP_MIN_LOG_LEVEL=0 in the
# environment shows every line again (errors that matter reach Python as exceptions).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SAMPLE_SUFFIXES = (".npz", ".pdb", ".dcd")


class _UsageError(Exception):
    """A command line that argparse could not parse; main prints it as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), like every other user error."""

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _version_line() -> str:
    """'coarseflow X (jax Y, jaxlib Z)', read from the installed metadata: nothing imported."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"coarseflow {of('coarseflow')} (jax {of('jax')}, jaxlib {of('jaxlib')})"


def _add_refine_flag(parser) -> None:
    parser.add_argument(
        "--refine-steps",
        type=_count,
        default=None,
        metavar="K",
        help="refine a learned model's samples by AIS toward p in K MALA steps "
        "each (default: [prediction] refine_steps)",
    )


def _count(text: str) -> int:
    """An -n value: an integer, also written as 1e4 (argparse's type for counts)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


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


def _cmd_train(args) -> int:
    processes = _start_processes(args)  # before anything (an import even) starts JAX's backend
    from coarseflow.analysis.evaluation import evaluate_run
    from coarseflow.config import load_config
    from coarseflow.parallel import check_divisible, data_mesh, is_main_process
    from coarseflow.run_training import train_from_config

    config = load_config(args.config)
    out = Path(args.out) if args.out is not None else Path("runs") / Path(args.config).stem
    mesh = data_mesh(args.devices)
    # the evaluation after training: on the training's devices, or process 0's own
    evaluation_mesh = mesh if processes == 1 else data_mesh(local=True)
    if not args.no_evaluate:  # checked now, not after hours of training
        prediction = config.prediction
        check_divisible(
            min(prediction.batch_size, prediction.n_samples),
            evaluation_mesh,
            "the evaluation's rows per batch (min([prediction] batch_size, n_samples))",
        )
    main = is_main_process()
    if main:
        _print_device(None if mesh is None else list(mesh.devices.flat), processes)
    result = train_from_config(
        config, out, resume=args.resume, progress=main and not args.quiet, init=args.init, mesh=mesh
    )
    if not main:  # process 0 reports, evaluates and writes; the others are done
        return 0
    print(f"trained {len(result.betas)} betas up to beta = {result.betas[-1]:.4g}; run: {out}")
    if not args.no_evaluate:
        summary = evaluate_run(out, progress=not args.quiet, mesh=evaluation_mesh)
        _print_summary(summary)
    _report_after(out)
    return 0


PROCESS_VARIABLES = {
    "coordinator": "COARSEFLOW_COORDINATOR",
    "num_processes": "COARSEFLOW_NUM_PROCESSES",
    "process_id": "COARSEFLOW_PROCESS_ID",
}


def _start_processes(args) -> int:
    """Join a run of several processes when the command line (--coordinator, --num-processes,
    --process-id, --distributed) or the environment (COARSEFLOW_COORDINATOR, ..._NUM_PROCESSES,
    ..._PROCESS_ID) asks for one; the number of processes (1: none started)."""
    from coarseflow.parallel import initialize

    values = {}
    for name, variable in PROCESS_VARIABLES.items():
        value = getattr(args, name)
        if value is None and os.environ.get(variable, "").strip():
            value = os.environ[variable].strip()
            if name != "coordinator":
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(f"${variable}: expected an integer, got {value!r}") from None
        values[name] = value
    return initialize(**values, detect=args.distributed)


def _cmd_sample(args) -> int:
    from coarseflow.analysis import trust
    from coarseflow.analysis.metrics import ess, pareto_k
    from coarseflow.parallel import data_mesh
    from coarseflow.sample_outputs import sample_run, write_sample_files

    mesh = data_mesh(args.devices)
    _print_device(None if mesh is None else list(mesh.devices.flat))
    target, samples, beta = sample_run(
        args.run,
        n=args.n,
        beta=args.beta,
        seed=args.seed,
        refine_steps=args.refine_steps,
        progress=not args.quiet,
        outputs=args.output or (),
        mesh=mesh,
    )
    outputs = args.output or [Path(args.run) / "samples" / f"beta_{beta:.6g}.npz"]
    written = write_sample_files(outputs, target, samples, beta)
    n_ess, k = ess(samples.log_weights), pareto_k(samples.log_weights)
    tail = "Pareto k n/a: fewer than 25 weights" if k != k else f"Pareto k {k:.2f}"  # k NaN
    names = ", ".join(str(p) for p in written)
    print(
        f"wrote {len(samples.x)} samples at beta = {beta:.6g} to {names} (ESS {n_ess:.1f}, {tail})"
    )
    # the verdict reads ESS, k and the largest weight together: PSIS alone calls near-uniform
    # two-level weights heavy-tailed (analysis/trust.py)
    warning = trust.warning_line(trust.log_weight_verdict(samples.log_weights))
    if warning is not None:
        print(warning, file=sys.stderr)
    return 0


def _print_device(devices=None, processes: int = 1) -> None:
    """What JAX computes on, at the start of train / sample / evaluate / reference (stdout, one
    line); ``devices``: those a run is split over (default: the first, or all that JAX sees),
    over ``processes`` processes."""
    from coarseflow.progress import device_line

    line = device_line(devices)
    print(line + (f", {processes} processes" if processes > 1 else ""), flush=True)


def _cmd_evaluate(args) -> int:
    from coarseflow.analysis.evaluation import evaluate_run
    from coarseflow.parallel import data_mesh

    mesh = data_mesh(args.devices)
    _print_device(None if mesh is None else list(mesh.devices.flat))
    summary = evaluate_run(
        args.run,
        n_samples=args.n,
        progress=not args.quiet,
        refine_steps=args.refine_steps,
        mesh=mesh,
    )
    _print_summary(summary)
    return 0


def _cmd_demo(args) -> int:
    import tomllib

    from coarseflow.analysis.evaluation import evaluate_run
    from coarseflow.config import parse_config
    from coarseflow.run_training import train_from_config

    text = importlib.resources.files("coarseflow").joinpath("configs/double_well.toml").read_text()
    out = Path(args.out)
    config = parse_config(tomllib.loads(text))
    print(f"coarseflow demo: the paper's double well along a tempering ladder -> {out}")
    train_from_config(config, out, resume=args.resume, progress=not args.quiet)
    summary = evaluate_run(out, progress=not args.quiet)
    _print_summary(summary)
    _report_after(out)
    return 0


def _cmd_report(args) -> int:
    from coarseflow.report import write_report

    print(f"report:  {write_report(args.run, evaluate=args.evaluate, progress=not args.quiet)}")
    return 0


def _report_after(run) -> None:
    """RUN/report.html at the end of train / demo. The run is saved by then, so a report that
    fails is said in one line and does not fail the command."""
    from coarseflow.report import write_report

    try:
        print(f"report:  {write_report(run)}")
    except Exception as err:  # noqa: BLE001 - training's results are on disk already
        print(f"coarseflow: report not written: {type(err).__name__}: {err}", file=sys.stderr)


def _cmd_reference(args) -> int:
    from coarseflow.parallel import data_mesh
    from coarseflow.reference import reference_main

    mesh = data_mesh(args.devices)
    _print_device(None if mesh is None else list(mesh.devices.flat))
    reference_main(args.config, args.output, quick=args.quick, mesh=mesh)
    return 0


def _cmd_build(args) -> int:
    from coarseflow.targets.molecule import peptide
    from coarseflow.targets.molecule.registry import forcefield_files

    residues = peptide.parse_sequence(args.sequence, caps=not args.no_caps, where="SEQUENCE")
    files = forcefield_files(args.forcefield)
    path, energy = peptide.peptide_pdb(args.output, residues, files)
    print(f"wrote {'-'.join(residues)} to {path} (minimised: {energy:.2f} kJ/mol)")
    return 0


def _cmd_inspect(args) -> int:
    from coarseflow.config import build_target, load_config

    target = build_target(load_config(args.config).target)
    if type(target).__name__ == "Molecule":  # importing it needs OpenMM: only for molecules
        from coarseflow.targets.molecule.describe import describe

        print(describe(target))
    else:
        n_x, n_y = target.partition.n_x, target.partition.n_y
        print(f"{type(target).__name__}: X {n_x} coordinates (coarse-grained), Y {n_y} (fast)")
    return 0


def _number(v) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def _print_summary(summary: dict) -> None:
    from coarseflow.analysis.basin_statistics import summary_lines
    from coarseflow.analysis.trust import entry_warning

    final = summary["final"]
    warning = entry_warning(final)  # None when the weights can be trusted
    keys = [k for k in final if not isinstance(final[k], list | dict)]
    print("final model (beta = {:.4g}):".format(final["beta"]))
    if warning:
        print(f"  {warning}")
    for k in keys:
        v = final[k]
        print(f"  {k:28s} {_number(v)}")
    for line in summary_lines(final.get("ramachandran_basins")):
        print(line)
    if warning:  # again below the numbers: a peptide's list scrolls the first one away
        print(f"  {warning}")
    if "refined" in final:
        r = final["refined"]
        print(
            f"refined by AIS toward p ({r['refine_steps']} steps of {r['refine_step_size']:.3g},"
            f" acceptance {r['refine_acceptance']:.2f}, {r['refine_energy_evals']} "
            f"evaluations): ESS fraction {r['ess_fraction']:.4g}, Pareto k "
            f"{_number(r['pareto_k'])}, log Z {_number(r['log_Z_estimate'])}"
        )
        if entry_warning(r):
            print(f"  {entry_warning(r)}")
    print(f"summary: {summary['summary_path']}")
    for fig in summary["figures"]:
        print(f"figure:  {fig}")


SAMPLE_HELP = """\
Draw N one-shot samples from a run's checkpoint, with their importance weights.

One draw (one AIS pass) writes every -o file: -o s.npz -o s.pdb -o s.dcd gives
the same N samples in the same order in each. A .npz holds x (all atoms), X,
log_weights, energy and beta. A .pdb / .dcd trajectory gets s.weights.txt
beside it, one line per frame i: i, log_weight, weight (normalised), u (kT);
a .dcd also gets its one-frame topology s.pdb (unless -o s.pdb asks for all
frames there). Samples depend only on the run, --beta and --seed: the first
N samples of -n M are those of -n N."""


def _add_devices_flag(parser, what: str) -> None:
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        metavar="N",
        help=f"split {what} over the first N devices JAX sees (default: all); the results "
        "equal one device's up to rounding, and a run resumes on any N",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="coarseflow", description=__doc__)
    p.add_argument("--version", action="version", version=_version_line())
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model along a tempering ladder")
    t.add_argument("config", help="config TOML file")
    t.add_argument("--out", help="run directory (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    _add_devices_flag(t, "each update's batch ([training] batch_size: a multiple of N)")
    t.add_argument(
        "--init",
        metavar="RUN",
        help="start from the flow of RUN's last checkpoint (same [model] and [target])",
    )
    t.add_argument("--no-evaluate", action="store_true", help="skip evaluation after training")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_script_flag(t)
    _add_process_flags(t)
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser(
        "sample",
        help="draw one-shot all-atom samples with importance weights",
        description=SAMPLE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("run", help="run directory written by train or demo")
    _add_devices_flag(s, "each batch of draws (min([prediction] batch_size, -n): a multiple of N)")
    s.add_argument(
        "-n",
        type=_count,
        default=None,
        help="number of samples (default: [prediction] n_samples); the first N of -n M are "
        "those of -n N",
    )
    s.add_argument("--beta", type=float, default=None, help="checkpoint beta (default: last)")
    s.add_argument(
        "-o",
        "--output",
        action="append",
        metavar="FILE",
        help="output .npz, or .pdb / .dcd for molecules (with FILE.weights.txt beside); "
        "repeat for several formats of the same draw (default: RUN/samples/beta_<beta>.npz)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no compiling stage, no progress bar")
    _add_refine_flag(s)
    _add_script_flag(s)
    s.set_defaults(func=_cmd_sample)

    e = sub.add_parser("evaluate", help="metrics and figures for every checkpoint of a run")
    e.add_argument("run", help="run directory")
    e.add_argument(
        "-n",
        type=_count,
        default=None,
        help="samples at the last checkpoint (default: [prediction] n_samples; "
        "earlier ones: at most [prediction] ladder_samples)",
    )
    e.add_argument("--quiet", action="store_true")
    _add_devices_flag(
        e,
        "each batch of draws (min([prediction] batch_size, -n): a multiple of N; not the "
        "refinement's AIS)",
    )
    _add_refine_flag(e)
    _add_script_flag(e)
    e.set_defaults(func=_cmd_evaluate)

    rp = sub.add_parser("report", help="RUN/report.html: settings, ladder, free energies, trust")
    rp.add_argument("run", help="run directory")
    rp.add_argument(
        "--evaluate", action="store_true", help="evaluate the run first (else summary.json's)"
    )
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_script_flag(rp)
    rp.set_defaults(func=_cmd_report)

    r = sub.add_parser("reference", help="ground truth for a molecule by replica-exchange MD")
    r.add_argument("config", help="molecule config TOML ([target] kind = 'molecule')")
    r.add_argument("-o", "--output", help="output .npz (default: <config>_reference.npz)")
    r.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    _add_devices_flag(
        r, "the replica exchange's independent chains ([reference] n_chains: a multiple of N)"
    )
    _add_script_flag(r)
    r.set_defaults(func=_cmd_reference)

    b = sub.add_parser("build", help="an all-atom peptide PDB from its sequence, minimised")
    b.add_argument("sequence", help="ACE-ALA-ALA-NME (three-letter, dashes) or AA (one-letter)")
    b.add_argument("-o", "--output", required=True, help="output .pdb")
    b.add_argument(
        "--no-caps",
        action="store_true",
        help="one-letter sequences: charged termini instead of ACE / NME caps",
    )
    b.add_argument(
        "--forcefield",
        nargs="+",
        metavar="XML",
        help="OpenMM force-field files (default: amber99sbildn.xml amber99_obc.xml)",
    )
    _add_script_flag(b)
    b.set_defaults(func=_cmd_build)

    i = sub.add_parser("inspect", help="what a config coarse-grains: X, Y, fixed atoms, dihedrals")
    i.add_argument("config", help="config TOML file")
    _add_script_flag(i)
    i.set_defaults(func=_cmd_inspect)

    d = sub.add_parser("demo", help="the double well end to end (about a minute on a laptop)")
    d.add_argument("--out", default="demo-run", help="run directory (default: demo-run)")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p


def _add_process_flags(parser) -> None:
    group = parser.add_argument_group(
        "several processes (hosts)",
        "one process per host or per GPU, all started with the same command line; process 0 "
        "writes the run (docs/distributed.md). Each option's default: the environment "
        "variable named.",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, where the others join ($COARSEFLOW_COORDINATOR)",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        metavar="P",
        help="number of processes ($COARSEFLOW_NUM_PROCESSES)",
    )
    group.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="this process's number, 0 to P-1 ($COARSEFLOW_PROCESS_ID)",
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="join several processes, whatever the options above leave out detected by JAX "
        "(a SLURM or Open MPI allocation)",
    )


def _add_script_flag(parser) -> None:
    parser.add_argument(
        "--allow-forcefield-scripts",
        action="store_true",
        help="let force-field XML files run the Python code they carry "
        "(<InitializationScript>, <Script>); refused by default",
    )


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk between processes, in $COARSEFLOW_JAX_CACHE (default
    ~/.cache/coarseflow/jax; empty: off). Without it, every `sample` or `evaluate` of a molecule
    compiles again what `train` compiled already."""
    default = Path.home() / ".cache" / "coarseflow" / "jax"
    path = os.environ.get("COARSEFLOW_JAX_CACHE", str(default))
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)


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


if __name__ == "__main__":
    sys.exit(main())
