"""What each subcommand does (``args.func`` of :func:`coarseflow.cli.parser.build_parser`):
train, sample, evaluate, demo, report, reference, build, inspect. Each imports what it needs
when it runs, so that the command line starts without JAX and a user error costs nothing.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

from coarseflow.cli.output import _print_device, _print_summary
from coarseflow.errors import ConfigError


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
