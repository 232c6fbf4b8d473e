"""What the commands print on stdout: the device line and an evaluation's summary."""

from __future__ import annotations


def _print_device(devices=None, processes: int = 1) -> None:
    """What JAX computes on, at the start of train / sample / evaluate / reference (stdout, one
    line); ``devices``: those a run is split over (default: the first, or all that JAX sees),
    over ``processes`` processes."""
    from coarseflow.progress import device_line

    line = device_line(devices)
    print(line + (f", {processes} processes" if processes > 1 else ""), flush=True)


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
        leapfrog = r.get("refine_leapfrog", 1)  # runs evaluated before HMC steps lack it
        kind = "MALA" if leapfrog == 1 else f"HMC ({leapfrog} leapfrog)"
        print(
            f"refined by AIS toward p ({r['refine_steps']} {kind} steps of "
            f"{r['refine_step_size']:.3g},"
            f" acceptance {r['refine_acceptance']:.2f}, {r['refine_energy_evals']} "
            f"evaluations): ESS fraction {r['ess_fraction']:.4g}, Pareto k "
            f"{_number(r['pareto_k'])}, log Z {_number(r['log_Z_estimate'])}"
        )
        if entry_warning(r):
            print(f"  {entry_warning(r)}")
    print(f"summary: {summary['summary_path']}")
    for fig in summary["figures"]:
        print(f"figure:  {fig}")
