"""A molecule's report: (phi, psi), Rg and RMSD of the samples, basin populations, divergences
from the ``[target] reference`` data, Ramachandran plots."""

from __future__ import annotations

import math
from pathlib import Path

import equinox as eqx
import numpy as np

from coarseflow.analysis import basin_statistics as bs
from coarseflow.analysis import observables as obs
from coarseflow.analysis import panel_free_energy as pfe
from coarseflow.analysis import plots
from coarseflow.analysis.metrics import histogram_kl_js, normalized_weights
from coarseflow.analysis.ramachandran import BASIN_SETS, BasinSet, backbone_classes
from coarseflow.analysis.reports import AbstractReport, Panel, States, Variable, is_one
from coarseflow.targets.molecule import Molecule, selection

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


def _degrees(angle_rad: np.ndarray) -> np.ndarray:
    """Radians -> degrees wrapped to [-180, 180)."""
    return (np.degrees(angle_rad) + 180.0) % 360.0 - 180.0


class MoleculeReport(AbstractReport):
    """Observables of a Molecule's samples and their comparison with its reference data.

    ``pairs``: extra pairs of dihedrals to draw free-energy surfaces on in the HTML report
    (beyond each residue's phi / psi), each a backbone dihedral's name ("psi ALA2") or 4 atom
    indices, e.g. ``(("psi ALA2", "phi ALA3"),)``.
    """

    target: Molecule
    pairs: tuple = eqx.field(static=True, default=())

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

    # ---- residues and their basins --------------------------------------------------------------

    def residue_classes(self) -> list[str]:
        """The Ramachandran class of each (phi, psi) residue (``residue_labels`` order): general,
        glycine, proline or pre-proline (ramachandran.residue_class, from the residue's name and
        the next one's: the residue of psi's last atom)."""
        info = self.target.info
        return backbone_classes(info.topology, info.phi_quads, info.psi_quads)

    def basin_sets(self) -> list[BasinSet]:
        """The basin set of each (phi, psi) residue."""
        return [BASIN_SETS[kind] for kind in self.residue_classes()]

    def dihedrals(self, x, names) -> np.ndarray:
        """Dihedrals (N, k) in radians of configurations x (N, n): each of ``names`` a
        backbone dihedral's name ("phi ALA2", selection.backbone_dihedrals) or 4 atom indices."""
        info = self.target.info
        known = {d.name: d.atoms for d in selection.backbone_dihedrals(info.topology)}
        quads = []
        for name in names:
            if isinstance(name, str):
                key = " ".join(name.split())
                if key not in known:
                    raise ValueError(f"dihedral {name!r}: expected one of {sorted(known)}")
                quads.append(known[key])
            else:
                quads.append(tuple(int(i) for i in name))
        pos = np.asarray(
            self.target.full_positions(np.asarray(x, dtype=np.float64)), dtype=np.float64
        )
        pos = pos[None] if pos.ndim == 2 else pos
        return obs.dihedral(pos, np.asarray(quads, np.int64).reshape(-1, 4))

    def _residue_variables(self, o: dict, ref: dict | None, k: int) -> list[Variable]:
        """phi and psi (degrees) of residue k; the reference file's alongside."""
        label = self.target.residue_labels[k]
        out = []
        for name in ("phi", "psi"):
            reference = None if ref is None else _degrees(ref[name][:, k])
            out.append(
                Variable(
                    f"{name} {label} (deg)",
                    _degrees(o[name][:, k]),
                    (-180.0, 180.0),
                    reference=reference,
                )
            )
        return out

    def _residue_states(self, o: dict, ref: dict | None, k: int) -> States:
        """Residue k's basins (its class's) and the reference file's populations in them."""
        basins = self.basin_sets()[k]
        names = list(basins.names)
        labels = basins.labels(o["phi"][:, k], o["psi"][:, k])
        if ref is None:
            return States(names, labels)
        pops = basins.populations(ref["phi"][:, k], ref["psi"][:, k])
        errors = self._reference_errors(ref, k)
        return States(names, labels, pops, errors, "reference file")

    def variables(self, x, X, beta) -> list[Variable]:
        """phi and psi (degrees) of the first residue that has both; the reference file's at
        beta = 1. (:meth:`panels` has every residue's.)"""
        return self._residue_variables(self.observables(x), self._reference(beta), 0)

    def states(self, x, X, beta) -> States:
        """The first residue's Ramachandran basins (its class's, ramachandran.py, and "other");
        the reference file's populations (and their errors, when it has them) at beta = 1."""
        return self._residue_states(self.observables(x), self._reference(beta), 0)

    def panels(self, x, X, beta) -> list[Panel]:
        """One panel per (phi, psi) residue: its phi / psi surface and profiles and its basins;
        then one per pair of ``pairs`` (a surface on any two dihedrals, no states)."""
        o = self.observables(x)
        ref = self._reference(beta)
        out = []
        for k, (label, kind) in enumerate(
            zip(self.target.residue_labels, self.residue_classes(), strict=True)
        ):
            out.append(
                Panel(
                    f"{label}: phi / psi, {kind} residue basins",
                    self._residue_variables(o, ref, k),
                    self._residue_states(o, ref, k),
                )
            )
        for a, b in self.pairs:
            angles = self.dihedrals(x, (a, b))
            names = [n if isinstance(n, str) else "atoms " + "-".join(map(str, n)) for n in (a, b)]
            variables = [
                Variable(f"{n} (deg)", _degrees(angles[:, i]), (-180.0, 180.0))
                for i, n in enumerate(names)
            ]
            out.append(Panel(f"{names[0]} / {names[1]}", variables, None))
        return out

    def _suffixes(self) -> list[str]:
        labels = self.target.residue_labels
        return [""] if len(labels) == 1 else [f"_{s}" for s in labels]

    def _reference(self, beta: float | None = None) -> dict | None:
        """The reference data (at beta = 1 only, when beta is given)."""
        if beta is not None and not is_one(beta):
            return None
        return self.target.info.reference

    def _reference_errors(self, ref: dict, k: int = 0) -> np.ndarray | None:
        """Basin population errors (len(names),) of a ``coarseflow reference`` file for residue
        k in its class's basins. With the file's ``chain`` (and n_blocks): from its frames, by
        the reference's own rule (basin_statistics.reference_populations); without: the file's
        populations_err, only for a molecule of one residue whose basins are the file's."""
        basins = self.basin_sets()[k]
        if "chain" in ref:
            n_blocks = int(ref.get("n_blocks", bs.N_BLOCKS))
            stats = bs.reference_populations(
                basins, ref["phi"][:, k], ref["psi"][:, k], ref["chain"], n_blocks
            )
            return stats.err
        names = [str(b) for b in ref.get("basins", ())]
        if len(self.target.residue_labels) != 1 or names != list(basins.names):
            return None
        return np.asarray(ref["populations_err"], dtype=np.float64)

    # ---- numbers ------------------------------------------------------------------------------

    def metrics(self, samples, weights, beta) -> dict:
        """Basin populations and free-energy differences per residue, Rg and (at beta = 1)
        divergences from the reference data.

        ``samples``: coarseflow.predict.draw.Samples (x (N, n)); ``weights``: (N,) normalised
        importance weights. Each (phi, psi) residue gets its class's basins
        (ramachandran.BASIN_SETS: general, glycine, proline, pre-proline). Keys (with
        ``_<resname><number>`` after "basin" / "ramachandran" when the molecule has several
        (phi, psi) residues): ``basin_<name>_raw`` and ``basin_<name>_reweighted`` (with its
        standard error ``basin_<name>_reweighted_err``, metrics.weighted_proportion_stderr) for each
        basin of the residue's set and "other" ("/" in names becomes "_"), ``rg_mean_raw``,
        ``rg_mean_reweighted`` (nm). At beta = 1 with a reference file also
        ``basin_<name>_reference`` (and ``basin_<name>_reference_err``, every residue's when
        the file has ``chain``, else only a one-residue molecule's whose basins are the file's
        populations_err's: :meth:`_reference_errors`), ``rg_mean_reference`` (if it has rg),
        ``ramachandran_kl_raw`` / ``_reweighted`` = KL(reference || model) and
        ``ramachandran_js_raw`` / ``_reweighted`` (nats) of 64 x 64 (phi, psi) histograms on
        [-pi, pi)^2 with 0.5 pseudo-counts per bin (metrics.histogram_kl_js), plus
        ``n_reference_frames``. ``ramachandran_basins``: a list, one record per residue
        (basin_statistics.as_dict): populations with 90 % bootstrap intervals, dF in kJ/mol
        (kT = the target's / beta) with intervals, relative to one basin, the reference's
        alongside. Non-finite samples are left out.
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
        kT = self.target.kT / float(beta)
        records = []
        for k, (sfx, basins) in enumerate(zip(self._suffixes(), self.basin_sets(), strict=True)):
            phi, psi = o["phi"][finite, k], o["psi"][finite, k]
            reference = None if ref is None else (ref["phi"][:, k], ref["psi"][:, k])
            errors = None if ref is None else self._reference_errors(ref, k)
            rb = bs.residue_basins(
                self.target.residue_labels[k],
                basins,
                phi,
                psi,
                w[finite] if have_weight else None,
                kT,
                reference=reference,
                reference_err=errors,
            )
            records.append(bs.as_dict(rb))
            sets = {"raw": rb.raw.p}
            if have_weight:
                sets["reweighted"], sets["reweighted_err"] = rb.reweighted.p, rb.reweighted_err
            if ref is not None:
                sets["reference"] = rb.reference
                if errors is not None:
                    sets["reference_err"] = errors
            for kind, values in sets.items():
                for name, value in zip(basins.names, values, strict=True):
                    out[f"basin{sfx}_{name.replace('/', '_')}_{kind}"] = float(value)
            if ref is not None:
                model = np.stack([phi, psi], axis=1)
                reference = np.stack(reference, axis=1)
                kl, js = histogram_kl_js(reference, model, REFERENCE_BINS, _ANGLES)
                out[f"ramachandran{sfx}_kl_raw"], out[f"ramachandran{sfx}_js_raw"] = kl, js
                if have_weight:
                    kl, js = histogram_kl_js(
                        reference, model, REFERENCE_BINS, _ANGLES, weights_b=w[finite]
                    )
                    out[f"ramachandran{sfx}_kl_reweighted"] = kl
                    out[f"ramachandran{sfx}_js_reweighted"] = js
        out["ramachandran_basins"] = records
        rg = o["rg"][finite]
        out["rg_mean_raw"] = float(np.mean(rg))
        if have_weight:
            out["rg_mean_reweighted"] = float(np.sum(w[finite] * rg) / np.sum(w[finite]))
        if ref is not None:
            out["n_reference_frames"] = int(ref["phi"].shape[0])
            if "rg" in ref:
                out["rg_mean_reference"] = float(np.mean(ref["rg"]))
        return out

    # ---- figures -----------------------------------------------------------------------------

    def figures(self, figures_dir, by_beta) -> list[Path]:
        """Ramachandran plot per beta and residue (reference alongside at beta = 1 if
        configured), and at the final beta per residue a reweighted free-energy figure (the
        phi / psi surface in kJ/mol with contours, the reference's and the bootstrap band's
        width beside it; phi and psi profiles with their bands below) and Rg / RMSD histograms.

        Files in ``figures_dir``: ramachandran[_<residue>]_beta_<beta>.png,
        ramachandran[_<residue>]_reweighted.png (the free-energy figure), rg.png, rmsd.png.
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
                paths += self._free_energy_figures(figures_dir, samples, o, beta)
                paths += self._distance_figures(figures_dir, o, beta, ref)
        return paths

    def _free_energy_figures(self, figures_dir: Path, samples, o: dict, beta: float) -> list:
        """ramachandran[_<residue>]_reweighted.png of the final beta's samples."""
        w = np.asarray(normalized_weights(samples.log_weights), dtype=np.float64)
        w = np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0)
        if not w.sum() > 0:
            return []
        ref = self._reference(beta)
        kT, unit = self.target.kT / float(beta), "kJ/mol"
        paths = []
        for k, sfx in enumerate(self._suffixes()):
            label, kind = self.target.residue_labels[k], self.residue_classes()[k]
            title = f"{label} ({kind} residue), beta = {beta:.4g}, reweighted"
            panel = Panel(title, self._residue_variables(o, ref, k), None)
            fig = pfe.panel_figure(panel, w, kT, unit)
            if fig is None:
                continue
            path = figures_dir / f"ramachandran{sfx}_reweighted.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=96)
            paths.append(path)
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
