"""What evaluation reports for each kind of target: metrics against the target's exact
references and figures, behind one interface (:class:`AbstractReport`, :func:`report_for`).

A report reads a target's physics (exact well masses, mixture weights, observables) and samples
(``coarseflow.predict.draw.Samples``); the targets know nothing of metrics or plots.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax.random as jr
import numpy as np

from coarseflow.analysis import metrics, plots
from coarseflow.predict.draw import log_partition_estimate
from coarseflow.targets import AbstractTarget, DoubleWell, GaussianMixture, ManyWell


def is_one(beta: float) -> bool:
    """Whether beta is the target's (1), where the exact references hold."""
    return abs(float(beta) - 1.0) < 1e-9


class Variable(NamedTuple):
    """A CG variable to draw free energies on: its ``name`` (with unit), its ``values`` (N,) at
    the samples, the plot ``range``; the reference, where there is one: ``exact_log_density``
    (points (M,) -> normalised log p at the samples' beta) or ``reference`` samples (M,)."""

    name: str
    values: np.ndarray
    range: tuple[float, float]
    exact_log_density: Callable[[np.ndarray], np.ndarray] | None = None
    reference: np.ndarray | None = None


class States(NamedTuple):
    """Metastable states: their ``names`` (S,), each sample's state ``labels`` (N,) in 0..S-1,
    and the reference populations (S,) with their standard errors (S,) where known, named by
    ``reference_kind`` ("exact", "reference file")."""

    names: list[str]
    labels: np.ndarray
    reference: np.ndarray | None = None
    reference_err: np.ndarray | None = None
    reference_kind: str = ""


class Panel(NamedTuple):
    """One block of the HTML report's free energies: a ``title`` ("" for a target's only one,
    else e.g. the residue), the ``variables`` it draws (a surface on the first two, a profile
    of each) and the ``states`` it tabulates (None: none)."""

    title: str
    variables: list[Variable]
    states: States | None


class AbstractReport(eqx.Module):
    """Metrics and figures of one target's samples, beyond the ESS that every target gets;
    the CG variables and states that the HTML report draws free energies on."""

    target: eqx.AbstractVar[AbstractTarget]

    def energy_unit(self) -> tuple[float, str]:
        """(k_B T of the target in the unit, the unit's name) for free energies: reduced
        energies are k_B T units already."""
        return 1.0, "kT"

    def variables(self, x: np.ndarray, X: np.ndarray, beta: float) -> list[Variable]:
        """The CG variables of samples x (N, n) / X (N, n_x): by default the first two X."""
        lo, hi = self.target.x_bounds()
        return [
            Variable(f"X{i + 1}", np.asarray(X)[:, i], (float(lo[i]), float(hi[i])))
            for i in range(min(2, np.shape(X)[1]))
        ]

    def reference_log_density_2d(self, beta: float) -> Callable[[np.ndarray], np.ndarray] | None:
        """Exact log density of the first two variables (points (M, 2) -> (M,)), if known."""
        return None

    def states(self, x: np.ndarray, X: np.ndarray, beta: float) -> States | None:
        """The target's metastable states, if it has a handful of them."""
        return None

    def panels(self, x: np.ndarray, X: np.ndarray, beta: float) -> list[Panel]:
        """The free-energy blocks of the HTML report: by default one, of :meth:`variables` and
        :meth:`states`; a peptide has one per residue."""
        return [Panel("", self.variables(x, X, beta), self.states(x, X, beta))]

    @abc.abstractmethod
    def metrics(self, samples, weights: np.ndarray, beta: float) -> dict:
        """Numbers of one checkpoint's samples; ``weights`` (N,) normalised importance weights.
        Keys ending "_raw" use the samples as they are, "_reweighted" ones the weights."""

    @abc.abstractmethod
    def figures(self, figures_dir: Path, by_beta: dict) -> list[Path]:
        """Figures of the samples ``by_beta`` ({beta: Samples}) in ``figures_dir``; their paths."""


class GenericReport(AbstractReport):
    """A target without exact references (any energy): nothing beyond the ESS."""

    target: AbstractTarget

    def metrics(self, samples, weights, beta) -> dict:
        return {}

    def figures(self, figures_dir, by_beta) -> list[Path]:
        return []


class DoubleWellReport(AbstractReport):
    """The right well's mass and the histogram TV of x_1 against the exact marginal."""

    target: DoubleWell

    def metrics(self, samples, weights, beta) -> dict:
        target, X, w = self.target, samples.X, weights
        right = X[:, 0] > 0
        exact = target.well_mass(beta)
        lo, hi = target.x_bounds()

        def density(g):
            return target.marginal_density(g, beta)

        return {
            "right_well_mass_raw": float(np.mean(right)),
            "right_well_mass_reweighted": float(np.sum(w * right)),
            "right_well_mass_exact": float(exact),
            "right_well_error_raw": float(abs(np.mean(right) - exact)),
            "right_well_error_reweighted": float(abs(np.sum(w * right) - exact)),
            "tv_x1_raw": metrics.histogram_tv(X[:, 0], density, 200, (lo[0], hi[0])),
            "tv_x1_reweighted": metrics.histogram_tv(
                X[:, 0], density, 200, (lo[0], hi[0]), weights=w
            ),
            "log_Z_exact": float(target.log_partition(beta)),
        }

    def variables(self, x, X, beta) -> list[Variable]:
        lo, hi = self.target.x_bounds()

        def log_p(g):
            with np.errstate(divide="ignore"):
                return np.log(self.target.marginal_density(g, beta))

        return [Variable("x1", np.asarray(X)[:, 0], (float(lo[0]), float(hi[0])), log_p)]

    def states(self, x, X, beta) -> States:
        m = float(self.target.well_mass(beta))
        right = (np.asarray(X)[:, 0] > 0).astype(np.int64)
        names = ["left well (x1 < 0)", "right well (x1 > 0)"]
        return States(names, right, np.array([1 - m, m]), np.zeros(2), "exact")

    def figures(self, figures_dir, by_beta) -> list[Path]:
        lo, hi = self.target.x_bounds()
        return [
            plots.plot_marginals_per_beta(
                Path(figures_dir) / "marginals_per_beta.png",
                {b: s.X[:, 0] for b, s in by_beta.items()},
                self.target.marginal_density,
                range=(float(lo[0]), float(hi[0])),
            )
        ]


class GaussianMixtureReport(AbstractReport):
    """Component masses; at beta = 1 their errors, marginal TVs and KL(q || p) of X."""

    target: GaussianMixture

    def metrics(self, samples, weights, beta) -> dict:
        target, X, w = self.target, samples.X, weights
        k = target.n_components
        labels = np.asarray(target.component_of(X))
        raw = metrics.mode_masses(labels, k)
        rew = metrics.mode_masses(labels, k, weights=w)
        out = {"component_masses_raw": raw.tolist(), "component_masses_reweighted": rew.tolist()}
        if is_one(beta):
            exact = np.asarray(target.component_weights)
            ref = np.asarray(target.sample(jr.key(12345), len(X)))[:, : target.n_x]
            tv_raw = [metrics.histogram_tv(X[:, i], ref[:, i], 100) for i in range(target.n_x)]
            tv_rew = [
                metrics.histogram_tv(X[:, i], ref[:, i], 100, weights=w) for i in range(target.n_x)
            ]
            log_p = np.asarray(target.log_marginal(X))
            out |= {
                "component_weights_exact": exact.tolist(),
                "components_found": int(np.sum(raw > 0.2 * exact)),
                "max_weight_error_raw": float(np.max(np.abs(raw - exact))),
                "max_weight_error_reweighted": float(np.max(np.abs(rew - exact))),
                "worst_marginal_tv_raw": float(max(tv_raw)),
                "worst_marginal_tv_reweighted": float(max(tv_rew)),
                "kl_q_p": float(np.mean(samples.log_qX - log_p)),
                "log_Z_exact": float(target.log_partition(1.0)),
            }
        return out

    def variables(self, x, X, beta) -> list[Variable]:
        out = super().variables(x, X, beta)
        if is_one(beta):  # exact samples of p, at beta = 1 only
            ref = np.asarray(self.target.sample(jr.key(12345), len(X)))
            out = [v._replace(reference=ref[:, i]) for i, v in enumerate(out)]
        return out

    def reference_log_density_2d(self, beta):
        if self.target.n_x != 2 or not is_one(beta):
            return None
        return lambda g: np.asarray(self.target.log_marginal(g))

    def states(self, x, X, beta) -> States:
        k = self.target.n_components
        labels = np.asarray(self.target.component_of(X), dtype=np.int64)
        names = [f"component {i + 1}" for i in range(k)]
        if not is_one(beta):
            return States(names, labels)
        exact = np.asarray(self.target.component_weights, dtype=np.float64)
        return States(names, labels, exact, np.zeros(k), "exact")

    def figures(self, figures_dir, by_beta) -> list[Path]:
        target, figures_dir = self.target, Path(figures_dir)
        final_beta = max(by_beta)
        final = by_beta[final_beta]
        w_final = np.asarray(metrics.normalized_weights(final.log_weights))
        ref = np.asarray(target.sample(jr.key(12345), len(final.X)))[:, :2]
        contour = (lambda g: np.asarray(target.log_marginal(g))) if target.n_x == 2 else None
        return [
            plots.plot_2d(
                figures_dir / "x_2d.png",
                final.X[:, :2],
                contour,
                ref,
                title=f"q(X) at beta = {final_beta:.3g} (first two X)",
            ),
            plots.plot_2d(
                figures_dir / "x_2d_reweighted.png",
                final.X[:, :2],
                contour,
                ref,
                weights=w_final,
                title="reweighted",
            ),
        ]


class ManyWellReport(AbstractReport):
    """The worst error of a coordinate's right-well mass, and log Z's error."""

    target: ManyWell

    def metrics(self, samples, weights, beta) -> dict:
        right = samples.X > 0  # (N, m): which well each coordinate is in
        exact = self.target.well_mass(beta)
        log_z = float(self.target.log_partition(beta))
        error = log_partition_estimate(samples.log_weights) - log_z  # signed: estimate - exact
        return {
            "right_well_mass_exact": float(exact),
            "max_right_well_error_raw": float(np.max(np.abs(np.mean(right, axis=0) - exact))),
            "max_right_well_error_reweighted": float(np.max(np.abs(weights @ right - exact))),
            "log_Z_exact": log_z,
            "log_Z_error": float(error),
        }

    def variables(self, x, X, beta) -> list[Variable]:
        def log_p(g):  # every X coordinate has the same exact marginal
            return np.asarray(self.target.log_marginal_1d(g, beta))

        return [v._replace(exact_log_density=log_p) for v in super().variables(x, X, beta)]

    def figures(self, figures_dir, by_beta) -> list[Path]:
        return []


def _report_classes() -> dict[type, type[AbstractReport]]:
    classes = {
        DoubleWell: DoubleWellReport,
        GaussianMixture: GaussianMixtureReport,
        ManyWell: ManyWellReport,
    }
    try:
        from coarseflow.analysis.molecule_report import MoleculeReport
        from coarseflow.targets.molecule import Molecule
    except ImportError:  # openmm / mdtraj not installed: molecules unavailable
        return classes
    return {**classes, Molecule: MoleculeReport}


def report_for(target: AbstractTarget) -> AbstractReport:
    """The report of the target's class (or of its nearest base with one); GenericReport else."""
    classes = _report_classes()
    for cls in type(target).__mro__:
        if cls in classes:
            return classes[cls](target)
    return GenericReport(target)
