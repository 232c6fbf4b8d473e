"""Cost of the learned conditional's symmetrised density on alanine dipeptide (27 methyl
relabelings): one coordinate transform for all relabelings (the relabelings permute xi) against
one transform per relabeling, and the unsymmetrised density for scale; prints a table.

    python benchmarks/symmetrised_density.py [--batch 256] [--repeats 5]

Each row times ``--batch`` reparameterised draws of q(Y|X) at one X with their exact log q and
its gradient with respect to the conditional's parameters, then the whole joint objective
(q(X) and q(Y|X), energies and forces) at beta = 1 as in ``configs/alanine_dipeptide_joint.toml``
(untrained model, wide conditional); compiled once, best of ``--repeats``. All rows are
measured in one process, so compare them as ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from coarseflow.config import build_target, load_config
from coarseflow.objectives import joint_terms, masked_mean
from coarseflow.workflow import build_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = load_config(ROOT / "configs" / "alanine_dipeptide_joint.toml")
    mol = build_target(config.target)
    flow, cond = build_model(config, mol)
    cond = eqx.tree_at(lambda c: c.log_diag, cond, jnp.full(mol.partition.n_y, -3.0))
    X0, _ = mol.partition.split(mol.reference_x)
    X = jnp.broadcast_to(X0, (args.batch, X0.shape[0]))
    z = flow.base_dist.sample(jr.key(2), (args.batch,))
    n_relabelings = len(cond.relabelings)
    variants = (
        ("one transform (shared methyl frames)", cond),
        ("one transform per relabeling", dataclasses.replace(cond, xi_relabelings=None)),
        (
            "unsymmetrised (1 relabeling)",
            dataclasses.replace(cond, relabelings=cond.relabelings[:1], xi_relabelings=None),
        ),
    )

    def density(c):  # reparameterised draws at one X and their exact log q
        log_q = c.sample_batch(jr.key(1), mol, X, 1.0).log_q
        return jnp.mean(jnp.where(jnp.isfinite(log_q), log_q, 0.0))

    def joint(model):  # the joint objective at beta = 1, energies and forces included
        terms = joint_terms(*model, jr.key(1), mol, z, 1.0, config.training.force_clip)
        return masked_mean(terms.surrogate, terms.ok)

    rows = []
    for task, fn, of in (
        ("density", density, lambda c: c),
        ("joint objective", joint, lambda c: (flow, c)),
    ):
        for name, variant in variants:
            step = eqx.filter_jit(eqx.filter_value_and_grad(fn))
            jax.block_until_ready(step(of(variant)))
            best = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(step(of(variant)))
                best = min(best, time.perf_counter() - t0)
            rows.append((task, name, best, float(step(of(variant))[0])))
    print(
        f"alanine dipeptide, {n_relabelings} relabelings, batch {args.batch}, "
        f"{os.cpu_count()} CPU cores, {jax.devices()[0].platform}"
    )
    print("| gradient of | symmetrisation | seconds | ratio | value |")
    print("|---|---|---|---|---|")
    for task, name, t, value in rows:
        base = next(r[2] for r in rows if r[0] == task)
        print(f"| {task} | {name} | {t:.4f} | {t / base:.1f}x | {value:.4f} |")


if __name__ == "__main__":
    main()
