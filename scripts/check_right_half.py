"""Check the shipped reference's right half (phi > 0) with plain 300 K Langevin dynamics.

The replica-exchange reference visits alpha_L and C7ax (phi > 0) only in short excursions
brought down from the hot rungs, so its C7ax : alpha_L ratio rests on a few dozen visits. Inside
the right half, alpha_L <-> C7ax switches are local and take picoseconds, while leaving it takes
much longer: many plain 300 K chains started there sample the right half's conditional
distribution directly. Two starts (alpha_L and C7ax, by rotating phi and psi of the minimised
PDB structure, then a short OpenMM minimisation) must agree with each other; together they give
P(C7ax | right half) to compare with the reference's and with a model's.

    python scripts/check_right_half.py [--chains 128] [--ps 100]

Prints, per start, the fraction of frames still in the right half, P(C7ax | right half) with
its standard error over chains, and the number of alpha_L <-> C7ax switches; then the
reference's value with its error between ladders.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.analysis.observables import BASINS, basin_labels, dihedral
from coarseflow.reference import ReferenceMolecule, load_reference, openmm_minimise
from coarseflow.samplers.replica_exchange import run_replica_exchange

TARGET = {
    "kind": "molecule",
    "pdb": "alanine_dipeptide",
    "forcefield": ["amber99sbildn.xml", "amber99_obc.xml"],
    "temperature": 300.0,
}
STARTS = {"alpha_L": (60.0, 45.0), "C7ax": (75.0, -65.0)}  # (phi, psi) in degrees
ALPHA_L, C7AX = BASINS.index("alpha_L"), BASINS.index("C7ax")


def _moving_side(bonds: list[tuple[int, int]], j: int, k: int) -> np.ndarray:
    """Atoms reached from k without crossing the bond j-k (k included)."""
    neighbours: dict[int, set[int]] = {}
    for a, b in bonds:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    seen, todo = {k}, [k]
    while todo:
        for n in neighbours[todo.pop()] - seen - {j}:
            seen.add(n)
            todo.append(n)
    if seen & (neighbours[j] - {k}):
        raise ValueError(f"bond {j}-{k} is in a ring: no side of it rotates alone")
    return np.array(sorted(seen))


def set_dihedral(positions, bonds, atoms, degrees: float) -> np.ndarray:
    """Rotate the d-side of the b-c bond so that dihedral (a, b, c, d) is ``degrees``."""
    a, b, c, d = (int(i) for i in atoms)
    p = np.array(positions, dtype=np.float64)
    angle = np.radians(degrees) - float(dihedral(p, np.array([a, b, c, d])))
    axis = (p[c] - p[b]) / np.linalg.norm(p[c] - p[b])
    side = _moving_side(bonds, b, c)
    r = p[side] - p[b]
    cos, sin = np.cos(angle), np.sin(angle)
    # Rodrigues' rotation about the b-c axis; the sign makes the dihedral grow by ``angle``
    p[side] = p[b] + r * cos + np.cross(axis, r) * sin + np.outer(r @ axis, axis) * (1 - cos)
    return p


def _conditional_c7ax(labels: np.ndarray) -> tuple[float, float, float]:
    """labels (frames, chains) -> P(C7ax | right half), its standard error over chains (ratio
    estimator), and the fraction of frames in the right half."""
    right = (labels == ALPHA_L) | (labels == C7AX)
    n_right = right.sum(axis=0).astype(float)
    n_c7ax = (labels == C7AX).sum(axis=0).astype(float)
    ratio = n_c7ax.sum() / n_right.sum()
    # delta method for a ratio of sums over independent chains
    resid = n_c7ax - ratio * n_right
    n = labels.shape[1]
    err = np.sqrt(n / (n - 1) * np.sum(resid**2)) / n_right.sum()
    return float(ratio), float(err), float(right.mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=128, help="chains per start")
    parser.add_argument("--ps", type=float, default=100.0, help="production per chain (ps)")
    parser.add_argument("--burn-ps", type=float, default=10.0, help="burn-in per chain (ps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    mol = ReferenceMolecule(TARGET)
    bonds = [(b[0].index, b[1].index) for b in mol.topology.bonds()]
    record_every, dt = 25, 0.001
    n_steps = int(round(args.ps / dt / record_every)) * record_every
    n_burn = int(round(args.burn_ps / dt / record_every)) * record_every
    print(
        f"{args.chains} chains per start, {n_burn * dt:g} ps burn-in + {n_steps * dt:g} ps, "
        f"300 K, BAOAB 1 fs, friction 1/ps, a frame every {record_every * dt * 1000:g} fs"
    )
    rows = []
    pooled = []
    for s, (name, (phi, psi)) in enumerate(STARTS.items()):
        p = set_dihedral(mol.positions, bonds, mol.phi_atoms[0], phi)
        p, _ = openmm_minimise(mol.system, set_dihedral(p, bonds, mol.psi_atoms[0], psi), 200)
        start = time.perf_counter()
        result = run_replica_exchange(
            mol.forcefield_jax.energy,
            mol.observe,
            jnp.asarray(p, jnp.float32),
            jnp.asarray(mol.masses, jnp.float32),
            np.array([mol.temperature]),
            n_chains=args.chains,
            time_step=dt,
            friction=1.0,
            n_steps=n_steps,
            burn_in_steps=n_burn,
            record_every=record_every,
            exchange_every=record_every,
            key=jax.random.key(args.seed + s),
        )
        rec = result.records
        labels = basin_labels(rec["phi"][..., 0], rec["psi"][..., 0])  # (frames, chains)
        ratio, err, right = _conditional_c7ax(labels)
        switches = int(
            np.sum(
                np.abs(np.diff((labels == C7AX).astype(int), axis=0))
                * ((labels[1:] == ALPHA_L) | (labels[1:] == C7AX))
                * ((labels[:-1] == ALPHA_L) | (labels[:-1] == C7AX))
            )
        )
        start_label = basin_labels(*np.radians([phi, psi]))
        rows.append(
            (
                name,
                BASINS[int(start_label)],
                right,
                ratio,
                err,
                switches,
                time.perf_counter() - start,
                result.n_reverted,
            )
        )
        pooled.append(labels)
    print(
        "| start | start basin | frames in right half | P(C7ax \\| right half) | "
        "alpha_L <-> C7ax switches | wall (s) | reverted |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, lab, right, ratio, err, sw, wall, rev in rows:
        print(
            f"| {name} | {lab} | {right:.3f} | {ratio:.4f} ± {err:.4f} | {sw} | {wall:.0f} | "
            f"{rev} |"
        )
    ratio, err, right = _conditional_c7ax(np.concatenate(pooled, axis=1))
    print(f"| both | | {right:.3f} | {ratio:.4f} ± {err:.4f} | | | |")

    ref = load_reference()
    ref_labels = basin_labels(ref["phi"], ref["psi"])
    chains = np.asarray(ref["chain"])
    n_chains = int(chains.max()) + 1
    per_chain = np.stack([ref_labels[chains == c] for c in range(n_chains)], axis=1)
    r_ratio, r_err, _ = _conditional_c7ax(per_chain)
    print(
        f"reference (replica exchange, {n_chains} ladders): P(C7ax | right half) = "
        f"{r_ratio:.4f} ± {r_err:.4f}"
    )


if __name__ == "__main__":
    main()
