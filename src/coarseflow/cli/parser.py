"""coarseflow train | sample | evaluate | reference | demo | build | inspect.

User errors: one line on stderr, exit status 2.
"""

# the command line's parser (build_parser: the subcommands, their flags and handlers, argparse's
# errors as one line); the docstring above is its --help description

from __future__ import annotations

import argparse

from coarseflow.cli.commands import (
    _cmd_build,
    _cmd_demo,
    _cmd_evaluate,
    _cmd_inspect,
    _cmd_reference,
    _cmd_report,
    _cmd_sample,
    _cmd_train,
)


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
