"""A molecule's report: (phi, psi), Rg and RMSD of the samples, basin populations, divergences
from the ``[target] reference`` data, Ramachandran plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from coarseflow.analysis import observables as obs
from coarseflow.analysis import plots
from coarseflow.analysis.metrics import histogram_kl_js, normalized_weights
from coarseflow.analysis.reports import AbstractReport, States, Variable, is_one
from coarseflow.targets.molecule import Molecule

REFERENCE_BINS = 64  # per angle, of the (phi, psi) histograms compared with the reference
_ANGLES = ((-math.pi, math.pi), (-math.pi, math.pi))


def _bulk_range(values: np.ndarray, reference: np.ndarray | None = None) -> tuple[float, float]:
    """Histogram range holding the central 99.8 % of the samples (and of the reference), so that
    a few exploded configurations do not squash the plot into one bin."""
    pool = [np.percentile(values, [0.1, 99.9])]
    if reference is not None and np.size(reference):
        pool.append(np.percentile(reference, [0.1, 99.9]))
    lo = min(float(p[0]) for p in pool)
    hi = max(float(p[1]) for p in pool)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05
    return lo - pad, hi + pad


class MoleculeReport(AbstractReport):
    """Observables of a Molecule's samples and their comparison with its reference data."""

    target: Molecule

    def observables(self, x) -> dict[str, np.ndarray]:
        """Observables of configurations x (N, n) (NumPy, float64).

        phi, psi: (N, m) radians for the m residues with both (``residue_labels``); rg: (N,) nm,
        all atoms, equal weights (as mdtraj.compute_rg); rmsd_to_reference: (N,) nm, heavy
        atoms, optimal superposition onto the PDB structure.
        """
        info = self.target.info
        pos = np.asarray(
            self.target.full_positions(np.asarray(x, dtype=np.float64)), dtype=np.float64
        )
        if pos.ndim == 2:
            pos = pos[None]
        return {
            "phi": obs.dihedral(pos, np.asarray(info.phi_quads, np.int64).reshape(-1, 4)),
            "psi": obs.dihedral(pos, np.asarray(info.psi_quads, np.int64).reshape(-1, 4)),
            "rg": obs.radius_of_gyration(pos),
            "rmsd_to_reference": obs.rmsd(
                pos, np.asarray(info.reference_positions), np.asarray(info.heavy_atoms, np.int64)
            ),
        }

    def energy_unit(self) -> tuple[float, str]:
        return self.target.kT, "kJ/mol"

    def variables(self, x, X, beta) -> list[Variable]:
        """phi and psi (degrees) of the first residue that has both; the reference file's at
        beta = 1."""
        o = self.observables(x)
        ref = self._reference(beta)
        out = []
        for name in ("phi", "psi"):
            values = (np.degrees(o[name][:, 0]) + 180.0) % 360.0 - 180.0
            reference = None
            if ref is not None:
                reference = (np.degrees(ref[name][:, 0]) + 180.0) % 360.0 - 180.0
            out.append(Variable(f"{name} (deg)", values, (-180.0, 180.0), reference=reference))
        return out

    def states(self, x, X, beta) -> States:
        """The Ramachandran basins (observables.BASINS and "other") of the first residue; the
        reference file's populations (and their errors, when it has them) at beta = 1."""
        o = self.observables(x)
        names = [*obs.BASINS, "other"]
        labels = obs.basin_labels(o["phi"][:, 0], o["psi"][:, 0])
        ref = self._reference(beta)
        if ref is None:
            return States(names, labels)
        pops = obs.basin_populations(ref["phi"][:, 0], ref["psi"][:, 0])
        errors = self._reference_errors(ref)
        return States(
            names,
            labels,
            np.array([pops[n] for n in names]),
            None if errors is None else np.array([errors[n] for n in names]),
            "reference file",
        )

    def _suffixes(self) -> list[str]:
        labels = self.target.residue_labels
        return [""] if len(labels) == 1 else [f"_{s}" for s in labels]

    def _reference(self, beta: float | None = None) -> dict | None:
        """The reference data (at beta = 1 only, when beta is given)."""
        if beta is not None and not is_one(beta):
            return None
        return self.target.info.reference

    def _reference_errors(self, ref: dict) -> dict[str, float] | None:
        """Basin population errors of a ``coarseflow reference`` file (one residue only)."""
        names = [str(b) for b in ref.get("basins", ())]
        if len(self.target.residue_labels) != 1 or names != [*obs.BASINS, "other"]:
            return None
        return dict(zip(names, ref["populations_err"].tolist(), strict=True))

    def metrics(self, samples, weights, beta) -> dict:
        """Basin populations, Rg and (at beta = 1) divergences from the reference data.

        ``samples``: coarseflow.predict.Samples (x (N, n)); ``weights``: (N,) normalised
        importance weights. Keys (with ``_<resname><number>`` after "basin" / "ramachandran" when
        the molecule has several (phi, psi) residues): ``basin_<name>_raw`` and
        ``basin_<name>_reweighted`` (with its standard error ``basin_<name>_reweighted_err``,
        metrics.weighted_mean_stderr) for each basin of observables.BASINS and "other" ("/" in
        names becomes "_"), ``rg_mean_raw``, ``rg_mean_reweighted`` (nm). At beta = 1 with a
        reference file also ``basin_<name>_reference`` (and ``basin_<name>_reference_err`` if
        the file has populations_err), ``rg_mean_reference`` (if it has rg),
        ``ramachandran_kl_raw`` / ``_reweighted`` = KL(reference || model) and
        ``ramachandran_js_raw`` / ``_reweighted`` (nats) of 64 x 64 (phi, psi) histograms on
        [-pi, pi)^2 with 0.5 pseudo-counts per bin (metrics.histogram_kl_js), plus
        ``n_reference_frames``. Non-finite samples are left out.
        """
        o = self.observables(samples.x)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        finite = np.isfinite(o["rg"]) & np.all(np.isfinite(o["phi"]) & np.isfinite(o["psi"]), 1)
        finite &= np.isfinite(w)
        out: dict = {"n_finite_configurations": int(finite.sum())}
        if not finite.any():
            return out
        w = np.where(finite, w, 0.0)
        have_weight = w.sum() > 0
        ref = self._reference(beta)
        for k, sfx in enumerate(self._suffixes()):
            phi, psi = o["phi"][finite, k], o["psi"][finite, k]
            sets = {"raw": obs.basin_populations(phi, psi)}
            if have_weight:
                sets["reweighted"] = obs.basin_populations(phi, psi, w[finite])
                sets["reweighted_err"] = obs.basin_population_errors(phi, psi, w[finite])
            if ref is not None:
                sets["reference"] = obs.basin_populations(ref["phi"][:, k], ref["psi"][:, k])
                errors = self._reference_errors(ref)
                if errors is not None:
                    sets["reference_err"] = errors
            for kind, pops in sets.items():
                for name, value in pops.items():
                    out[f"basin{sfx}_{name.replace('/', '_')}_{kind}"] = float(value)
            if ref is not None:
                model = np.stack([phi, psi], axis=1)
                reference = np.stack([ref["phi"][:, k], ref["psi"][:, k]], axis=1)
                kl, js = histogram_kl_js(reference, model, REFERENCE_BINS, _ANGLES)
                out[f"ramachandran{sfx}_kl_raw"], out[f"ramachandran{sfx}_js_raw"] = kl, js
                if have_weight:
                    kl, js = histogram_kl_js(
                        reference, model, REFERENCE_BINS, _ANGLES, weights_b=w[finite]
                    )
                    out[f"ramachandran{sfx}_kl_reweighted"] = kl
                    out[f"ramachandran{sfx}_js_reweighted"] = js
        rg = o["rg"][finite]
        out["rg_mean_raw"] = float(np.mean(rg))
        if have_weight:
            out["rg_mean_reweighted"] = float(np.sum(w[finite] * rg) / np.sum(w[finite]))
        if ref is not None:
            out["n_reference_frames"] = int(ref["phi"].shape[0])
            if "rg" in ref:
                out["rg_mean_reference"] = float(np.mean(ref["rg"]))
        return out

    def figures(self, figures_dir, by_beta) -> list[Path]:
        """Ramachandran plot per beta (reference alongside at beta = 1 if configured), and at the
        final beta a reweighted Ramachandran plot and Rg / RMSD histograms.

        Files in ``figures_dir``: ramachandran[_<residue>]_beta_<beta>.png,
        ramachandran[_<residue>]_reweighted.png, rg.png, rmsd.png.
        """
        figures_dir = Path(figures_dir)
        paths: list[Path] = []
        final = max(by_beta)
        for beta in sorted(by_beta):
            samples = by_beta[beta]
            o = self.observables(samples.x)
            ok = np.all(np.isfinite(o["phi"]) & np.isfinite(o["psi"]), axis=1)
            if not ok.any():
                continue
            ref = self._reference(beta)
            for k, sfx in enumerate(self._suffixes()):
                model = np.stack([o["phi"][ok, k], o["psi"][ok, k]], axis=1)
                reference = None
                if ref is not None:
                    reference = np.stack([ref["phi"][:, k], ref["psi"][:, k]], axis=1)
                paths.append(
                    plots.plot_ramachandran(
                        figures_dir / f"ramachandran{sfx}_beta_{beta:.4g}.png", model, reference
                    )
                )
                if beta == final:
                    w = np.asarray(normalized_weights(samples.log_weights), dtype=np.float64)[ok]
                    if np.all(np.isfinite(w)) and w.sum() > 0:
                        paths.append(
                            plots.plot_ramachandran(
                                figures_dir / f"ramachandran{sfx}_reweighted.png",
                                model,
                                reference,
                                weights=w,
                            )
                        )
            if beta == final:
                paths += self._distance_figures(figures_dir, o, beta, ref)
        return paths

    def _distance_figures(
        self, figures_dir: Path, o: dict, beta: float, ref: dict | None
    ) -> list[Path]:
        """rg.png and rmsd.png of the observables o of the final beta's samples."""
        paths = []
        rg = o["rg"][np.isfinite(o["rg"])]
        rg_ref = ref.get("rg") if ref is not None else None
        if rg.size:
            paths.append(
                plots.plot_marginal_1d(
                    figures_dir / "rg.png",
                    rg,
                    reference=rg_ref,
                    range=_bulk_range(rg, rg_ref),
                    title=f"radius of gyration (nm), beta = {beta:.4g}",
                )
            )
        rmsd = o["rmsd_to_reference"][np.isfinite(o["rmsd_to_reference"])]
        if rmsd.size:
            paths.append(
                plots.plot_marginal_1d(
                    figures_dir / "rmsd.png",
                    rmsd,
                    range=_bulk_range(rmsd),
                    title=f"heavy-atom RMSD to the PDB structure (nm), beta = {beta:.4g}",
                )
            )
        return paths
