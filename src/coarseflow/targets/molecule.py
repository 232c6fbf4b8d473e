"""A molecule from a PDB file and OpenMM force-field files: x = free Cartesian coordinates (nm).

OpenMM and mdtraj are needed to build a Molecule (they are imported here); the energy itself is
the pure-JAX :class:`coarseflow.forcefield.ForceField`.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import mdtraj
import numpy as np
from jaxtyping import Array, Float
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from coarseflow import checks
from coarseflow.analysis import observables as obs
from coarseflow.errors import ConfigError
from coarseflow.forcefield import (
    ForceField,
    build_system,
    forcefield_from_system,
)
from coarseflow.model.internal import AtomPlacements, ZMatrix, zmatrix_placements
from coarseflow.partition import Partition
from coarseflow.targets.base import AbstractTarget

MOLAR_GAS_CONSTANT = 8.31446261815324e-3
"""k_B per mole in kJ/mol/K (openmm.unit.MOLAR_GAS_CONSTANT_R / 1000)."""

ALANINE_DIPEPTIDE_SELECTION = (
    "(resname ACE and name C) or (resname ALA and name N CA C) or (resname NME and name N)"
)
"""The five backbone atoms that define alanine dipeptide's phi and psi."""

BUILTIN_MOLECULES: dict[str, tuple[str, str]] = {
    "alanine_dipeptide": ("alanine_dipeptide.pdb", ALANINE_DIPEPTIDE_SELECTION),
    # openmmtools' AlanineDipeptideImplicit: Amber ff96 prmtop (+ .inpcrd), OBC1 (FAB, TA-BG, CMT)
    "alanine_dipeptide_implicit": (
        "alanine_dipeptide_implicit.prmtop", ALANINE_DIPEPTIDE_SELECTION
    ),
}
"""Built-in ``pdb`` names -> (file in coarseflow/data, default cg_selection)."""

DEFAULT_SELECTION = "backbone"
GAUGE_MARGIN = 0.05  # nm: box half-width for the free coordinates of gauge atoms b and c
"""cg_selection for a user's PDB file when none is given: mdtraj's backbone (N, CA, C, O of every
protein residue, capping groups included)."""

_REFERENCE_BINS = 64

INTERNAL_BOND_MARGIN = 0.03  # nm: box half-width of the bond lengths in internal coordinates
INTERNAL_ANGLE_MARGIN = 0.6  # rad: box half-width of the bond angles
INTERNAL_ANGLE_EDGE = 0.05  # rad: angles stay inside (edge, pi - edge)
SEAM_SCAN_POINTS = 72  # rigid torsion scan (5 degree steps) that places each dihedral's seam
SEAM_SCAN_WINDOW = 6  # points either side (30 degrees) over which the scan's weight is summed


class _Info:
    """Non-array data of a Molecule (topology, reference data); hashed and compared by identity,
    so it can sit in a static field."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _resolve_pdb(pdb: str) -> tuple[str, str | None]:
    """(path to the PDB file, default selection of a built-in molecule or None)."""
    if not isinstance(pdb, str) or not pdb:
        raise ConfigError(f"[target] pdb: expected a built-in name or a file path, got {pdb!r}")
    if pdb in BUILTIN_MOLECULES:
        name, selection = BUILTIN_MOLECULES[pdb]
        return str(importlib.resources.files("coarseflow").joinpath("data", name)), selection
    path = Path(pdb).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"[target] pdb '{pdb}': no such file (relative paths are relative to the current "
            f"directory; built-in molecules: {', '.join(BUILTIN_MOLECULES)})"
        )
    return str(path), None


def _select(topology, selection: str, n_atoms: int) -> np.ndarray:
    if not isinstance(selection, str) or not selection.strip():
        raise ConfigError(f"[target] cg_selection: expected an mdtraj selection, got {selection!r}")
    try:
        idx = np.asarray(topology.select(selection), dtype=np.int64)
    except Exception as err:  # pyparsing / ValueError with a very long message
        text = " ".join(str(err).split())
        found = re.search(r"(Expected [^,{]*?|found .*?)\(at char \d+\)", text)
        detail = found.group(0) if found else text[:120]
        raise ConfigError(
            f"[target] cg_selection '{selection}': not a valid mdtraj selection ({detail})"
        ) from None
    if idx.size == 0:
        raise ConfigError(f"[target] cg_selection '{selection}' selects no atoms")
    if idx.size == n_atoms:
        raise ConfigError(
            f"[target] cg_selection '{selection}' selects all {n_atoms} atoms; the fast "
            "variables Y would be empty: select fewer atoms"
        )
    if idx.size < 3:
        raise ConfigError(
            f"[target] cg_selection '{selection}' selects {idx.size} atom(s); at least 3 are "
            "needed (rigid-body motion is removed by holding coordinates of three of them)"
        )
    return np.sort(idx)


def _distance_from_axis(a, b, c) -> float:
    """Distance (nm) of point c from the line through a and b."""
    ab = b - a
    return float(np.linalg.norm(np.cross(ab, c - a)) / max(np.linalg.norm(ab), 1e-300))


def _bond_graph_distances(system, n_atoms: int) -> np.ndarray:
    """(n_atoms, n_atoms) number of bonds between atoms (inf if not connected)."""
    import openmm

    rows, cols = [], []
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, *_ = force.getBondParameters(k)
                rows += [i, j]
                cols += [j, i]
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_atoms, n_atoms))
    return shortest_path(graph, unweighted=True, directed=False)


def _auto_fixed_atoms(cg: np.ndarray, ref: np.ndarray, hops: np.ndarray) -> tuple[int, int, int]:
    """Three consecutively bonded CG atoms a-b-c whose middle atom is nearest the CG centroid.

    Fallback when no CG atoms are bonded in a row: b nearest the centroid, a the CG atom nearest
    b, c the next nearest CG atom that is off the a-b line.
    """
    centre = ref[cg].mean(axis=0)
    best = None
    for b in cg:
        ends = [int(i) for i in cg if hops[b, i] == 1]
        for i, a in enumerate(ends):
            for c in ends[i + 1 :]:
                if _distance_from_axis(ref[a], ref[b], ref[c]) < 0.01:
                    continue
                key = (float(np.linalg.norm(ref[b] - centre)), int(b), a, c)
                if best is None or key < best:
                    best = key
    if best is not None:
        return best[2], best[1], best[3]
    order = cg[np.argsort(np.linalg.norm(ref[cg] - centre, axis=1), kind="stable")]
    b = int(order[0])
    near = [int(i) for i in cg[np.argsort(np.linalg.norm(ref[cg] - ref[b], axis=1))] if i != b]
    a = near[0]
    for c in near[1:]:
        if _distance_from_axis(ref[a], ref[b], ref[c]) >= 0.01:
            return a, b, c
    raise ConfigError("[target] cg_selection: the selected atoms are collinear; select more")


def _check_fixed_atoms(fixed, cg: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    where = "[target] fixed_atoms"
    if (
        not isinstance(fixed, list | tuple)
        or len(fixed) != 3
        or not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in fixed)
    ):
        raise ConfigError(f"{where}: expected 3 atom indices (0-based, PDB order), got {fixed!r}")
    a, b, c = (int(i) for i in fixed)
    if len({a, b, c}) != 3:
        raise ConfigError(f"{where}: expected 3 distinct atoms, got {[a, b, c]}")
    missing = [i for i in (a, b, c) if i not in set(cg.tolist())]
    if missing:
        raise ConfigError(
            f"{where}: atoms {missing} are not coarse-grained atoms (cg_selection selects "
            f"{cg.tolist()})"
        )
    if _distance_from_axis(ref[a], ref[b], ref[c]) < 0.01:
        raise ConfigError(f"{where}: atoms {[a, b, c]} are (nearly) collinear; choose others")
    return a, b, c


def _frame(p, q, r, xp):
    """Orthonormal frame (..., 3, 3), rows e1 = (q - p)^, e2 in the pqr plane, e3 = e1 x e2."""
    e1 = q - p
    e1 = e1 / xp.linalg.norm(e1, axis=-1, keepdims=True)
    v = r - p
    e2 = v - xp.sum(v * e1, axis=-1, keepdims=True) * e1
    e2 = e2 / xp.linalg.norm(e2, axis=-1, keepdims=True)
    return xp.stack([e1, e2, xp.cross(e1, e2)], axis=-2)


def _graft_frames(cg, fast, ref, hops) -> np.ndarray:
    """(n_fast, 3) CG atoms (p, q, r) whose frame carries each fast atom.

    Candidates are ordered by number of bonds to the fast atom, then by distance in the reference
    structure; p and q are the first two, r the next one clearly off the p-q line.
    """
    out = []
    for i in fast:
        order = sorted(cg.tolist(), key=lambda j: (hops[i, j], np.linalg.norm(ref[j] - ref[i])))
        p, q = order[0], order[1]
        for r in order[2:]:
            d = _distance_from_axis(ref[p], ref[q], ref[r])
            if d > 0.1 * np.linalg.norm(ref[r] - ref[p]):
                break
        else:  # all off-line candidates exhausted: any non-collinear one (exists, see gauge)
            r = next(j for j in order if _distance_from_axis(ref[p], ref[q], ref[j]) > 1e-3)
        out.append((p, q, r))
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def _fast_placements(hops, cg, fast, ref, rotors) -> AtomPlacements | None:
    """Z-matrix placements of the fast atoms onto the CG atoms, or None if some is unbonded."""
    placements = zmatrix_placements(hops == 1, [int(i) for i in cg], ref)
    if placements is None:
        return None
    return AtomPlacements(_share_rotor_frames(placements, rotors), [int(i) for i in fast])


def _share_rotor_frames(placements, rotors) -> list[tuple[int, int, int, int]]:
    """Place every terminal atom of an equivalent-rotor group (a methyl's hydrogens) from the
    same three atoms, those of the group's first-placed terminal.

    Breadth-first placement puts a methyl's second and third hydrogens on the first; then every
    relabeling of the group needs internal coordinates of its own. From one shared frame, a
    relabeling permutes whole (r, angle, dihedral) triples of xi, and the learned conditional's
    symmetrised density costs one coordinate transform instead of one per relabeling (27 for
    alanine dipeptide: 94 % of a joint update).
    """
    out = list(placements)
    row = {p[0]: n for n, p in enumerate(out)}
    for centre, _, _, terminals in rotors:
        placed = [t for t in terminals if t in row]
        if len(placed) < 2:
            continue
        _, j, k, l_ = out[min(row[t] for t in placed)]
        if j != centre or {k, l_} & set(terminals):
            continue
        for t in placed:
            out[row[t]] = (t, j, k, l_)
    return out


def _equivalent_rotors(forcefield, hops, fast, ref) -> tuple:
    """Groups of equivalent terminal fast atoms that a rotation about one bond permutes.

    Each (c, k, l, terminals): m >= 2 fast atoms bonded only to the centre c, where c has one
    other neighbour k (the axis k-c) and l is a neighbour of k other than c (for dihedrals); a
    methyl's three hydrogens. Kept only if relabeling the terminals cyclically leaves the energy
    of the reference structure unchanged (identical force-field parameters) to a relative
    1e-5: in float32 the summation order alone moved alanine dipeptide's -134 kJ/mol by
    6e-5 (a 1e-8 tolerance found one of its three methyls), while different parameters move it
    by orders of magnitude more.
    """
    bonded = hops == 1
    fast_set = set(int(i) for i in fast)
    energy = jax.jit(forcefield.energy)
    base = float(energy(ref))
    groups = []
    for c in range(len(ref)):
        neighbours = [int(i) for i in np.flatnonzero(bonded[c])]
        terminal = [i for i in neighbours if i in fast_set and bonded[i].sum() == 1]
        others = [i for i in neighbours if i not in terminal]
        if len(terminal) < 2 or len(others) != 1:
            continue
        k = others[0]
        ls = [int(i) for i in np.flatnonzero(bonded[k]) if i != c]
        if not ls:
            continue
        shifted = ref.copy()
        shifted[terminal] = ref[np.roll(terminal, 1)]
        if abs(float(energy(shifted)) - base) <= 1e-5 * max(1.0, abs(base)):
            groups.append((c, k, ls[0], tuple(terminal)))
    return tuple(groups)


def _load_reference(reference: str, n_residues: int) -> dict[str, np.ndarray]:
    """phi, psi (frames, m), optional rg (frames,) and populations_err (len(BASINS) + 1,)."""
    where = f"[target] reference '{reference}'"
    if not isinstance(reference, str) or not reference:
        raise ConfigError(f"{where}: expected a path to an .npz file or a built-in name")
    if reference in BUILTIN_MOLECULES:
        path = Path(str(importlib.resources.files("coarseflow").joinpath(
            "data", f"{reference}_reference.npz")))
    else:
        path = Path(reference).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: no such file (relative paths are relative to the current "
                          "directory)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except Exception as err:
        raise ConfigError(f"{where}: cannot read it as an .npz file ({err})") from None
    missing = [k for k in ("phi", "psi") if k not in arrays]
    if missing:
        raise ConfigError(f"{where}: missing arrays {missing} (expected phi, psi in radians, "
                          "optional rg in nm)")
    out = {}
    for k in ("phi", "psi"):
        a = np.asarray(arrays[k], dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] != n_residues or a.shape[0] == 0:
            raise ConfigError(f"{where}: {k} has shape {arrays[k].shape}; expected (frames,) or "
                              f"(frames, {n_residues}) for this molecule's {n_residues} "
                              "(phi, psi) residue(s)")
        out[k] = a
    if out["phi"].shape != out["psi"].shape:
        raise ConfigError(f"{where}: phi and psi have different shapes")
    if "rg" in arrays:
        out["rg"] = np.asarray(arrays["rg"], dtype=np.float64).reshape(-1)
    # basin population uncertainties of `coarseflow reference` (one (phi, psi) residue only)
    names = [str(b) for b in np.asarray(arrays.get("basins", [])).reshape(-1)]
    if n_residues == 1 and names == [*obs.BASINS, "other"] and "populations_err" in arrays:
        err = np.asarray(arrays["populations_err"], dtype=np.float64).reshape(-1)
        if err.shape == (len(names),):
            out["populations_err"] = err
    return out


class Molecule(AbstractTarget):
    r"""A molecule in a force field at temperature T: u(x) = U(positions(x)) / (k_B T).

    Built from a PDB file (or the built-in ``"alanine_dipeptide"``), OpenMM force-field XML files
    (default amber99sbildn.xml + amber99_obc.xml: Amber99SB-ILDN with OBC2 implicit solvent; no
    cutoff, no constraints) and a coarse-grained atom selection in mdtraj's selection language.

    **Coordinates.** Rigid-body motion is removed by holding 6 coordinates fixed. Three CG atoms
    (a, b, c) = ``fixed_atoms`` define a gauge frame: a at the origin, b on the +z axis, c in the
    xz-plane. Held (always 0): x, y, z of a; x, y of b; y of c. Flat index of atom i's
    component k (0 = x, 1 = y, 2 = z) is 3 i + k; ``held_coordinates`` lists the six. The
    target's x is the remaining n = 3 N_atoms - 6 coordinates in nm, in the PDB's atom order
    (flattened xyz, the held ones left out). X = the free coordinates of the CG atoms
    (3 N_cg - 6), Y = all coordinates of the other ("fast") atoms (3 N_fast); Y's masses are the
    atomic masses (amu). By default (a, b, c) are three consecutively bonded CG atoms whose
    middle atom is nearest the centre of the CG atoms (N, CA, C of the alanine residue for
    alanine dipeptide).

    **Effect on the distribution.** The density over the free coordinates is exp(-beta u)
    restricted to the gauge slice. Integrating the six rigid-body degrees of freedom out of the
    full Cartesian Boltzmann distribution instead gives, for the internal configuration, the
    density exp(-beta u) * |r_ab|^2 * d_c, where |r_ab| is the a-b distance and d_c the distance
    of c from the a-b axis (the Jacobian of the map (gauge coordinates, rotation, translation)
    -> Cartesian coordinates). So sampling the slice weights each internal configuration by
    1 / (|r_ab|^2 d_c) relative to the physical distribution. With a, b, c bonded in a row,
    |r_ab| is a bond length and d_c = |r_bc| sin(angle abc): both vary only with bond and angle
    vibrations (a few per cent), so the factor is nearly constant and its effect on phi, psi,
    Rg and basin populations is negligible (it only reweights bond-length / angle fluctuations
    of three atoms slightly). The slice also holds four copies of each configuration related by
    180-degree rotations (b on -z, c at x < 0); they are separated by configurations with
    |r_ab| = 0 or c on the axis, which the energy forbids, so samples never cross between them.

    **Support box.** When every CG atom is reached from the gauge atoms through bonds between
    CG atoms (alanine dipeptide's five atoms, a backbone selection), the flow works in internal
    coordinates of the CG atoms (``x_bijection()``, a Z-matrix: bond lengths, bond angles,
    dihedrals) and ``x_bounds()`` is a box of those: bonds at the reference -+ 0.03 nm, angles
    -+ 0.6 rad, dihedrals a full turn each (see ``x_bounds``), so the flow only proposes intact
    bonds. Otherwise (``x_bijection()`` None) ``x_bounds()`` is the reference (PDB)
    structure's free CG coordinates +- ``box_margin`` nm (default 0.4; ``cartesian_x_bounds``).
    That box must hold the CG atoms' motion at the smallest beta of the tempering ladder:
    dihedral rotations move backbone atoms by up to ~0.3 nm from the reference; for larger
    molecules or larger CG motions, increase it.

    **Units.** Positions nm, energies reduced (k_B T units at ``temperature``), masses amu,
    k_B = 8.31446261815324e-3 kJ/mol/K (OpenMM's value).
    """

    partition: Partition = eqx.field(static=True)
    forcefield: ForceField
    reference_x: Float[Array, " n"]
    masses: Float[Array, " n_atoms"]
    graft_local: Float[Array, "n_fast 3"]
    temperature: float = eqx.field(static=True)
    kT: float = eqx.field(static=True)
    box_margin: float = eqx.field(static=True)
    n_atoms: int = eqx.field(static=True)
    fixed_atoms: tuple[int, int, int] = eqx.field(static=True)
    cg_atoms: tuple[int, ...] = eqx.field(static=True)
    fast_atoms: tuple[int, ...] = eqx.field(static=True)
    free_indices: tuple[int, ...] = eqx.field(static=True)
    graft_frames: tuple[tuple[int, int, int], ...] = eqx.field(static=True)
    cg_selection: str = eqx.field(static=True)
    pdb_path: str = eqx.field(static=True)
    info: _Info = eqx.field(static=True)

    def __init__(
        self,
        pdb: str = "alanine_dipeptide",
        forcefield: tuple[str, ...] | None = None,
        temperature: float = 300.0,
        cg_selection: str | None = None,
        fixed_atoms: tuple[int, ...] | None = None,
        box_margin: float = 0.4,
        reference: str | None = None,
    ):
        """The ``[target]`` table of ``kind = "molecule"``.

        pdb: a built-in name ("alanine_dipeptide": ACE-ALA-NME, 22 atoms, shipped with the
            package; "alanine_dipeptide_implicit": openmmtools' AlanineDipeptideImplicit, Amber
            ff96 in OBC1, docs/molecules.md) or a path to a PDB file with hydrogens (relative
            to the current directory), or to an Amber prmtop with its .inpcrd beside it.
        forcefield: OpenMM force-field XML files (OpenMM's bundled names or paths; default
            amber99sbildn.xml + amber99_obc.xml); for a prmtop only its implicit solvent,
            "OBC1" (default), "OBC2" or "vacuum" (see forcefield.build_system).
        temperature: kelvin; the target beta = 1 is this temperature.
        cg_selection: mdtraj selection of the coarse-grained atoms (X). Default: for
            alanine_dipeptide the five atoms defining phi and psi,
            ``(resname ACE and name C) or (resname ALA and name N CA C) or (resname NME and
            name N)``; for a user's PDB ``backbone`` (N, CA, C, O of every residue, caps too).
        fixed_atoms: 3 CG atom indices (0-based, PDB order) (a, b, c) of the gauge frame
            (see the class docstring); default: chosen automatically.
        box_margin: half-width (nm) of the flow's Cartesian box around the reference CG
            coordinates (used only when the CG atoms have no Z-matrix; see x_bounds).
        reference: optional .npz with ``phi``, ``psi`` (radians, (frames,) or (frames, m)) and
            optional ``rg`` (nm), ``basins`` + ``populations_err`` at ``temperature`` (as
            ``coarseflow reference`` writes it; a built-in name such as "alanine_dipeptide"
            means the shipped ``data/<name>_reference.npz``); evaluation then compares the
            beta = 1 model with it.
        """
        # a temperature past 1e5 K or a box wider than 10 nm is a typo, not a molecule
        checks.number("[target] temperature", temperature, 0.0, 1e5)
        checks.number("[target] box_margin", box_margin, 0.0, 10.0)
        if forcefield is not None:
            forcefield = (forcefield,) if isinstance(forcefield, str) else tuple(forcefield)
        path, builtin_selection = _resolve_pdb(pdb)
        if cg_selection is None:
            cg_selection = builtin_selection or DEFAULT_SELECTION

        _, positions, system = build_system(path, forcefield)
        try:
            topology = mdtraj.load_topology(path)
        except Exception as err:
            raise ConfigError(f"[target] pdb '{pdb}': mdtraj cannot read it ({err})") from None
        n_atoms = int(positions.shape[0])
        if topology.n_atoms != n_atoms:
            raise ConfigError(f"[target] pdb '{pdb}': OpenMM reads {n_atoms} atoms, mdtraj "
                              f"{topology.n_atoms}")
        cg = _select(topology, cg_selection, n_atoms)
        hops = _bond_graph_distances(system, n_atoms)
        if fixed_atoms is None:
            a, b, c = _auto_fixed_atoms(cg, positions, hops)
        else:
            a, b, c = _check_fixed_atoms(fixed_atoms, cg, positions)

        held = {3 * a, 3 * a + 1, 3 * a + 2, 3 * b, 3 * b + 1, 3 * c + 1}
        free = np.asarray([i for i in range(3 * n_atoms) if i not in held], dtype=np.int64)
        cg_set = set(cg.tolist())
        x_idx = [j for j, f in enumerate(free) if int(f) // 3 in cg_set]
        fast = np.asarray([i for i in range(n_atoms) if i not in cg_set], dtype=np.int64)

        self.partition = Partition.from_x(int(free.size), x_idx)
        self.temperature = float(temperature)
        self.kT = MOLAR_GAS_CONSTANT * float(temperature)
        self.box_margin = float(box_margin)
        self.n_atoms = n_atoms
        self.fixed_atoms = (a, b, c)
        self.cg_atoms = tuple(int(i) for i in cg)
        self.fast_atoms = tuple(int(i) for i in fast)
        self.free_indices = tuple(int(i) for i in free)
        self.cg_selection = cg_selection
        self.pdb_path = path
        self.forcefield = forcefield_from_system(system)
        from openmm import unit

        self.masses = jnp.asarray(
            [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)],
            dtype=float,
        )

        # reference structure in the gauge frame (NumPy, float64)
        ref_gauge = _align_np(positions, a, b, c)
        self.reference_x = jnp.asarray(ref_gauge.reshape(-1)[free], dtype=float)
        frames = _graft_frames(cg, fast, ref_gauge, hops)
        self.graft_frames = tuple(tuple(int(i) for i in f) for f in frames)
        rot = _frame(ref_gauge[frames[:, 0]], ref_gauge[frames[:, 1]], ref_gauge[frames[:, 2]], np)
        local = np.einsum("fij,fj->fi", rot, ref_gauge[fast] - ref_gauge[frames[:, 0]])
        self.graft_local = jnp.asarray(local, dtype=float)

        # Z-matrix of the CG atoms (internal coordinates of the flow), when the CG bond graph
        # reaches every CG atom from the gauge atoms
        local = {int(i): n for n, i in enumerate(cg)}
        bonded = hops[np.ix_(cg, cg)] == 1
        gauge_local = (local[a], local[b], local[c])
        placements = zmatrix_placements(bonded, gauge_local, ref_gauge[cg])
        if placements is not None and not (
            bonded[gauge_local[0], gauge_local[1]]
            and bonded[gauge_local[1], gauge_local[2]]
            and all(bonded[j, k] for _, j, k, _ in placements)
        ):
            placements = None  # a distance or angle that is not a bond's: keep Cartesian
        x_flat = free[np.asarray(x_idx, dtype=np.int64)]
        zmatrix_x_index = [3 * local[int(f) // 3] + int(f) % 3 for f in x_flat]

        rotors = _equivalent_rotors(self.forcefield, hops, fast, ref_gauge)
        phi_q, psi_q = obs.phi_psi_indices(topology)
        residues = [topology.atom(int(q[1])).residue for q in phi_q]
        self.info = _Info(
            topology=topology,
            reference_positions=ref_gauge,
            heavy_atoms=np.asarray(
                [at.index for at in topology.atoms if at.element is None
                 or at.element.symbol != "H"], dtype=np.int64),
            phi_quads=phi_q,
            psi_quads=psi_q,
            residue_labels=[f"{r.name}{r.resSeq}" for r in residues],
            reference=None if reference is None else _load_reference(reference, len(phi_q)),
            reference_path=reference,
            zmatrix=None if placements is None else (len(cg), gauge_local, placements,
                                                      zmatrix_x_index),
            x_bijection=None,
            rotors=rotors,
            y_placements=_fast_placements(hops, cg, fast, ref_gauge, rotors),
        )

    # ---- coordinates -------------------------------------------------------------------------

    @property
    def held_coordinates(self) -> tuple[int, ...]:
        """The 6 flat indices (3 atom + component) held at 0: a x,y,z; b x,y; c y."""
        a, b, c = self.fixed_atoms
        return (3 * a, 3 * a + 1, 3 * a + 2, 3 * b, 3 * b + 1, 3 * c + 1)

    @property
    def topology(self) -> mdtraj.Topology:
        """The mdtraj Topology of the PDB file (atoms in the PDB's order)."""
        return self.info.topology

    def full_positions(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n_atoms 3"]:
        """Positions (..., n_atoms, 3) in nm of free coordinates x (..., n): held ones are 0."""
        x = jnp.asarray(x)
        if x.shape[-1:] != (self.n,):
            raise ValueError(f"x: expected shape (..., {self.n}), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(float)
        flat = jnp.zeros(x.shape[:-1] + (3 * self.n_atoms,), x.dtype)
        flat = flat.at[..., np.asarray(self.free_indices)].set(x)
        return flat.reshape(x.shape[:-1] + (self.n_atoms, 3))

    def free_coordinates(
        self, positions: Float[Array, "*batch n_atoms 3"]
    ) -> Float[Array, "*batch n"]:
        """Free coordinates x (..., n) of any positions (..., n_atoms, 3) in nm.

        The positions are first moved into the gauge frame by a rigid motion (translate a to the
        origin, rotate b onto +z and c into the xz-plane with x > 0), so rotated and translated
        copies of a structure give the same x, and free_coordinates(full_positions(x)) == x for
        x with c at x > 0 (the case for every x near the reference).
        """
        pos = jnp.asarray(positions)
        if pos.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(f"positions: expected shape (..., {self.n_atoms}, 3), got "
                             f"{pos.shape}")
        a, b, c = self.fixed_atoms
        rel = pos - pos[..., a : a + 1, :]
        ez = rel[..., b, :] / jnp.linalg.norm(rel[..., b, :], axis=-1, keepdims=True)
        v = rel[..., c, :]
        vx = v - jnp.sum(v * ez, axis=-1, keepdims=True) * ez
        ex = vx / jnp.linalg.norm(vx, axis=-1, keepdims=True)
        ey = jnp.cross(ez, ex)
        rot = jnp.stack([ex, ey, ez], axis=-2)  # rows: new axes
        local = jnp.einsum("...ij,...nj->...ni", rot, rel)
        flat = local.reshape(local.shape[:-2] + (3 * self.n_atoms,))
        return flat[..., np.asarray(self.free_indices)]

    # ---- the target interface ----------------------------------------------------------------

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """Reduced energy u = U(full_positions(x)) / (k_B T) of one configuration x (n,)."""
        x = jnp.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"x: expected one configuration of shape ({self.n},), got "
                             f"{x.shape}; batch with jax.vmap")
        return self.forcefield.energy(self.full_positions(x)) / self.kT

    def x_bijection(self) -> ZMatrix | None:
        """Internal -> Cartesian coordinates of the CG atoms (coarseflow.model.internal.ZMatrix).

        Internal coordinates: r_ab; r_bc, angle abc; then (bond length r_ij, bond angle ijk,
        dihedral ijkl) for every other CG atom i, breadth-first over the bonds between CG atoms
        from the gauge atoms (j bonded to i, k bonded to j, l bonded to k when possible).
        Each dihedral's window [seam, seam + 2 pi) starts at the least populated direction of a
        rigid torsion scan of the reference structure: the dihedral is turned in 5 degree steps
        (CG atoms downstream move with it, the other atoms grafted by ``y_init``), and the seam
        is where the Boltzmann weight exp(-u) summed over +-30 degrees is smallest (ties: the
        one nearest the reference + pi). Computed once per Molecule (jit-compiles the energy;
        call it outside jit) and cached.

        None (the flow works in Cartesian X) when some CG atom cannot be reached through bonds
        between CG atoms from the gauge atoms, or the gauge atoms are not bonded a-b-c.
        """
        info = self.info
        if info.zmatrix is None:
            return None
        if info.x_bijection is None:
            n_cg, gauge, placements, x_index = info.zmatrix
            zm = ZMatrix(n_cg, gauge, placements, x_index)
            info.x_bijection = eqx.tree_at(lambda z: z.seams, zm, self._dihedral_seams(zm))
        return info.x_bijection

    def _dihedral_seams(self, zm: ZMatrix) -> np.ndarray:
        """(n_dihedrals,) seams from rigid torsion scans of the reference (see x_bijection)."""
        X_ref, _ = self.partition.split(self.reference_x)
        q_ref = np.asarray(zm.inverse(X_ref), dtype=np.float64)
        slots = zm.dihedral_slots
        steps = 2 * math.pi * np.arange(SEAM_SCAN_POINTS) / SEAM_SCAN_POINTS
        q = np.repeat(q_ref[None], slots.size * steps.size, axis=0)
        rows = np.arange(q.shape[0])
        q[rows, np.repeat(slots, steps.size)] += np.tile(steps, slots.size)
        u = np.asarray(_scan_energies(self, zm, jnp.asarray(q)), dtype=np.float64)
        u = u.reshape(slots.size, steps.size)
        seams = []
        w = SEAM_SCAN_WINDOW
        for n, slot in enumerate(slots):
            un = np.where(np.isfinite(u[n]), u[n], np.inf)
            logw = -(un - np.min(un))
            win = np.stack([np.roll(logw, s) for s in range(-w, w + 1)])
            with np.errstate(divide="ignore"):
                score = np.logaddexp.reduce(win, axis=0)
            opposite = np.abs(np.angle(np.exp(1j * (steps - math.pi))))
            best = np.lexsort((opposite, score))[0]
            seam = q_ref[slot] + steps[best]
            seams.append((seam + math.pi) % (2 * math.pi) - math.pi)
        return np.asarray(seams)

    def x_periodic(self) -> np.ndarray:
        """(n_x,) bool: the CG dihedrals (phi, psi for alanine) when X is internal coordinates."""
        zm = self.x_bijection()
        if zm is None:
            return super().x_periodic()
        return np.asarray(zm.kinds) == "dihedral"

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (n_x,): the box of the flow over X, in x_bijection's coordinates.

        With internal coordinates (``x_bijection()`` not None): bond lengths at the reference
        -+ 0.03 nm (INTERNAL_BOND_MARGIN), bond angles at the reference -+ 0.6 rad
        (INTERNAL_ANGLE_MARGIN) clipped to (0.05, pi - 0.05), dihedrals [seam, seam + 2 pi).

        Otherwise (Cartesian X): reference free CG coordinates -+ box_margin nm. The three free
        coordinates of the gauge atoms b and c (b's z, c's x and z) only follow the vibrations
        of the a-b and b-c bonds and the a-b-c angle, so their margin is GAUGE_MARGIN (0.05 nm)
        when that is smaller: the flow then never proposes broken bonds.
        """
        zm = self.x_bijection()
        if zm is not None:
            X_ref, _ = self.partition.split(self.reference_x)
            q = np.asarray(zm.inverse(X_ref), dtype=np.float64)
            kinds = np.asarray(zm.kinds)
            lo, hi = q.copy(), q.copy()
            bond, angle, dih = kinds == "bond", kinds == "angle", kinds == "dihedral"
            lo[bond] = np.maximum(q[bond] - INTERNAL_BOND_MARGIN, 0.5 * q[bond])
            hi[bond] = q[bond] + INTERNAL_BOND_MARGIN
            lo[angle] = np.maximum(q[angle] - INTERNAL_ANGLE_MARGIN, INTERNAL_ANGLE_EDGE)
            hi[angle] = np.minimum(q[angle] + INTERNAL_ANGLE_MARGIN, math.pi - INTERNAL_ANGLE_EDGE)
            seams = np.asarray(zm.seams, dtype=np.float64)
            lo[dih], hi[dih] = seams, seams + 2 * math.pi
            return lo, hi
        return self.cartesian_x_bounds()

    def cartesian_x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The Cartesian box of X (see x_bounds), whether or not x_bijection is used."""
        x_idx = np.asarray(self.partition.x_indices)
        ref = np.asarray(self.reference_x, dtype=np.float64)[x_idx]
        flat = np.asarray(self.free_indices)[x_idx]  # flat xyz index of each X coordinate
        _, b, c = self.fixed_atoms
        gauge = np.isin(flat // 3, [b, c])
        margin = np.where(gauge, min(GAUGE_MARGIN, self.box_margin), self.box_margin)
        return ref - margin, ref + margin

    def y_init(self, X: Float[Array, " n_x"]) -> Float[Array, " n_y"]:
        """Fast-atom coordinates (n_y,) grafted onto the CG atoms of X (n_x,).

        Each fast atom keeps its reference-structure position in a local frame of three CG atoms
        (its nearest along the bonds; ``graft_frames``), so hydrogens and side chains follow the
        backbone wherever the flow puts it. Smooth (away from collinear frame atoms), jit-able,
        vmap-able.
        """
        pos = self._cg_positions(X)
        frames = np.asarray(self.graft_frames, dtype=np.int64).reshape(-1, 3)
        p, q, r = pos[frames[:, 0]], pos[frames[:, 1]], pos[frames[:, 2]]
        rot = _frame(p, q, r, jnp)
        local = self.graft_local.astype(X.dtype)
        fast = p + jnp.einsum("fij,fi->fj", rot, local)
        return fast.reshape(-1)

    def _cg_positions(self, X: Float[Array, " n_x"]) -> Float[Array, "n_atoms 3"]:
        """Positions (n_atoms, 3) with the CG atoms of X (n_x,) and the fast atoms at 0."""
        X = jnp.asarray(X)
        if not jnp.issubdtype(X.dtype, jnp.floating):
            X = X.astype(float)
        x_flat = np.asarray(self.free_indices)[np.asarray(self.partition.x_indices)]
        flat = jnp.zeros((3 * self.n_atoms,), X.dtype).at[x_flat].set(X)
        return flat.reshape(self.n_atoms, 3)

    def y_internal(self, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]) -> Float[Array, " n_y"]:
        """Bond length, angle and dihedral (nm, rad) of every fast atom, placed breadth-first
        over the bonds from the CG atoms (``coarseflow.model.internal.AtomPlacements``); Y
        itself when some fast atom is not bonded to the rest."""
        zm = self.info.y_placements
        if zm is None:
            return super().y_internal(X, Y)
        return zm.internal(self.full_positions(self.partition.merge(X, Y)))

    def y_cartesian(self, X, xi):
        zm = self.info.y_placements
        if zm is None:
            return super().y_cartesian(X, xi)
        return zm.cartesian(self._cg_positions(X), xi)

    def y_periodic(self) -> np.ndarray:
        zm = self.info.y_placements
        return super().y_periodic() if zm is None else zm.periodic

    def y_symmetry_number(self) -> int:
        """The product of the sizes of the equivalent-rotor groups (3 per methyl group)."""
        return math.prod(len(g[3]) for g in self.info.rotors)

    def _rotor_relabelings(self) -> list[dict[int, int]]:
        """Every combination of cyclic shifts of each equivalent-rotor group's terminal atoms,
        as maps atom -> the atom whose position it takes; the identity ({}) first. Groups with
        a held coordinate are left out (not a relabeling of Y alone)."""
        y_flat = set(np.asarray(self.free_indices)[np.asarray(self.partition.y_indices)].tolist())
        maps: list[dict[int, int]] = [{}]
        for *_, terminals in self.info.rotors:
            if not all(3 * t + c in y_flat for t in terminals for c in range(3)):
                continue
            maps = [{**m, **dict(zip(terminals, np.roll(terminals, -shift).tolist(),
                                     strict=True))}
                    for shift in range(len(terminals)) for m in maps]
        return maps

    def y_relabelings(self) -> np.ndarray:
        """(S, n_y) int: every combination of cyclic shifts of each equivalent-rotor group's
        terminal atoms (a methyl's hydrogens), as permutations of Y; the identity first."""
        y_flat = np.asarray(self.free_indices)[np.asarray(self.partition.y_indices)]
        where = {int(f): j for j, f in enumerate(y_flat)}  # flat xyz index -> position in Y
        perms = []
        for moves in self._rotor_relabelings():
            q = np.arange(len(y_flat))
            for t, s in moves.items():
                for c in range(3):
                    q[where[3 * t + c]] = where[3 * s + c]
            perms.append(q)
        return np.stack(perms)

    def y_internal_relabelings(self) -> np.ndarray | None:
        """(S, n_y) int: y_relabelings() acting on xi, y_internal(X, Y[sigma]) =
        y_internal(X, Y)[pi], when every relabeled atom is placed from atoms no relabeling
        moves and shares its frame with the atoms it trades places with (``_share_rotor_frames``
        makes it so for methyls); else None."""
        zm = self.info.y_placements
        if zm is None:
            return self.y_relabelings()
        row = {p[0]: n for n, p in enumerate(zm.placements)}
        perms = []
        for moves in self._rotor_relabelings():
            pi = np.arange(3 * len(zm.placements))
            for t, s in moves.items():
                if zm.placements[row[t]][1:] != zm.placements[row[s]][1:]:
                    return None
                pi[3 * row[t]:3 * row[t] + 3] = np.arange(3 * row[s], 3 * row[s] + 3)
            if any(set(p[1:]) & moves.keys() for p in zm.placements):
                return None
            perms.append(pi)
        return np.stack(perms)

    def y_in_domain(self, X, Y, Y_ref) -> Array:
        """For every group of equivalent terminal atoms (a methyl's hydrogens), its first atom
        is the one whose dihedral about the rotor's bond is nearest that of the first atom in
        Y_ref. The m cyclic relabelings of the group put each of its atoms first once, so
        exactly one of them is in the domain."""
        pos = self.full_positions(self.partition.merge(X, Y))
        ref = self.full_positions(self.partition.merge(X, Y_ref))
        inside = jnp.asarray(True)
        for c, k, h, terminals in self.info.rotors:
            quads = np.asarray([(t, c, k, h) for t in terminals])
            d = obs.dihedral(pos, quads) - obs.dihedral(ref, quads[:1])
            dist = jnp.abs(jnp.mod(d + jnp.pi, 2 * jnp.pi) - jnp.pi)
            inside = inside & (dist[0] <= jnp.min(dist[1:]))
        return inside

    def y_mass(self) -> Float[Array, " n_y"]:
        """Atomic masses (amu) of the fast atoms, repeated for x, y, z: (n_y,)."""
        return jnp.repeat(self.masses[np.asarray(self.fast_atoms)], 3)

    # ---- output ------------------------------------------------------------------------------

    def write_trajectory(self, path, x: Float[Array, "N n"]) -> list[Path]:
        """Write configurations x (N, n) as a .pdb (all frames) or .dcd trajectory via mdtraj.

        Every atom in the PDB's order and topology, the held coordinates restored, positions in
        nm (the gauge frame). For .dcd, a one-frame topology file ``path.with_suffix('.pdb')``
        is written next to it (VMD / PyMOL / mdtraj need it to open the .dcd). Returns the
        paths written.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".pdb", ".dcd"):
            raise ConfigError(f"-o {path}: a trajectory must be .pdb or .dcd")
        xyz = np.asarray(self.full_positions(np.asarray(x, dtype=np.float64)), dtype=np.float32)
        if xyz.ndim == 2:
            xyz = xyz[None]
        path.parent.mkdir(parents=True, exist_ok=True)
        traj = mdtraj.Trajectory(xyz, self.topology)
        traj.save(str(path), force_overwrite=True)
        written = [path]
        if suffix == ".dcd":
            top_path = path.with_suffix(".pdb")
            traj[0].save_pdb(str(top_path), force_overwrite=True)
            written.append(top_path)
        return written

    # ---- observables -------------------------------------------------------------------------

    def observables(self, x: Float[Array, "N n"]) -> dict[str, np.ndarray]:
        """Observables of configurations x (N, n) (NumPy, float64).

        phi, psi: (N, m) radians for the m residues with both (``residue_labels``); rg: (N,) nm,
        all atoms, equal weights (as mdtraj.compute_rg); rmsd_to_reference: (N,) nm, heavy
        atoms, optimal superposition onto the PDB structure.
        """
        pos = np.asarray(self.full_positions(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        if pos.ndim == 2:
            pos = pos[None]
        info = self.info
        heavy = info.heavy_atoms
        return {
            "phi": obs.dihedral(pos, info.phi_quads),
            "psi": obs.dihedral(pos, info.psi_quads),
            "rg": obs.radius_of_gyration(pos),
            "rmsd_to_reference": obs.rmsd(pos, info.reference_positions, heavy),
        }

    @property
    def residue_labels(self) -> list[str]:
        """Names (resname + number) of the residues that have both phi and psi."""
        return list(self.info.residue_labels)

    def _suffixes(self) -> list[str]:
        labels = self.residue_labels
        return [""] if len(labels) == 1 else [f"_{s}" for s in labels]

    def observables_metrics(self, samples, weights, beta: float) -> dict:
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
        from coarseflow.analysis.metrics import histogram_kl_js

        o = self.observables(samples.x)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        finite = np.isfinite(o["rg"]) & np.all(np.isfinite(o["phi"]) & np.isfinite(o["psi"]), 1)
        finite &= np.isfinite(w)
        out: dict = {"n_finite_configurations": int(finite.sum())}
        if not finite.any():
            return out
        w = np.where(finite, w, 0.0)
        have_weight = w.sum() > 0
        ref = self.info.reference if abs(float(beta) - 1.0) < 1e-9 else None
        angle_range = ((-math.pi, math.pi), (-math.pi, math.pi))
        for k, sfx in enumerate(self._suffixes()):
            phi, psi = o["phi"][finite, k], o["psi"][finite, k]
            sets = {"raw": obs.basin_populations(phi, psi)}
            if have_weight:
                sets["reweighted"] = obs.basin_populations(phi, psi, w[finite])
                sets["reweighted_err"] = obs.basin_population_errors(phi, psi, w[finite])
            if ref is not None:
                sets["reference"] = obs.basin_populations(ref["phi"][:, k], ref["psi"][:, k])
                if "populations_err" in ref:
                    sets["reference_err"] = dict(
                        zip((*obs.BASINS, "other"), ref["populations_err"].tolist(), strict=True)
                    )
            for kind, pops in sets.items():
                for name, value in pops.items():
                    out[f"basin{sfx}_{name.replace('/', '_')}_{kind}"] = float(value)
            if ref is not None:
                model = np.stack([phi, psi], axis=1)
                reference = np.stack([ref["phi"][:, k], ref["psi"][:, k]], axis=1)
                kl, js = histogram_kl_js(reference, model, _REFERENCE_BINS, angle_range)
                out[f"ramachandran{sfx}_kl_raw"], out[f"ramachandran{sfx}_js_raw"] = kl, js
                if have_weight:
                    kl, js = histogram_kl_js(reference, model, _REFERENCE_BINS, angle_range,
                                             weights_b=w[finite])
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

    def plot_figures(self, figures_dir, by_beta: dict) -> list[Path]:
        """Ramachandran plot per beta (reference alongside at beta = 1 if configured), and at the
        final beta a reweighted Ramachandran plot and Rg / RMSD histograms. Returns the paths.

        ``by_beta``: {beta: coarseflow.predict.Samples}. Files in ``figures_dir``:
        ramachandran[_<residue>]_beta_<beta>.png, ramachandran[_<residue>]_reweighted.png,
        rg.png, rmsd.png.
        """
        from coarseflow.analysis import plots
        from coarseflow.analysis.metrics import normalized_weights

        figures_dir = Path(figures_dir)
        paths: list[Path] = []
        ref = self.info.reference
        final = max(by_beta)
        for beta in sorted(by_beta):
            samples = by_beta[beta]
            o = self.observables(samples.x)
            ok = np.all(np.isfinite(o["phi"]) & np.isfinite(o["psi"]), axis=1)
            if not ok.any():
                continue
            at_one = abs(float(beta) - 1.0) < 1e-9
            for k, sfx in enumerate(self._suffixes()):
                model = np.stack([o["phi"][ok, k], o["psi"][ok, k]], axis=1)
                reference = None
                if ref is not None and at_one:
                    reference = np.stack([ref["phi"][:, k], ref["psi"][:, k]], axis=1)
                paths.append(plots.plot_ramachandran(
                    figures_dir / f"ramachandran{sfx}_beta_{beta:.4g}.png", model, reference))
                if beta == final:
                    w = np.asarray(normalized_weights(samples.log_weights), dtype=np.float64)[ok]
                    if np.all(np.isfinite(w)) and w.sum() > 0:
                        paths.append(plots.plot_ramachandran(
                            figures_dir / f"ramachandran{sfx}_reweighted.png", model, reference,
                            weights=w))
            if beta == final:
                rg = o["rg"][np.isfinite(o["rg"])]
                rg_ref = ref.get("rg") if (ref is not None and at_one) else None
                if rg.size:
                    paths.append(plots.plot_marginal_1d(
                        figures_dir / "rg.png", rg, reference=rg_ref, range=_bulk_range(rg, rg_ref),
                        title=f"radius of gyration (nm), beta = {beta:.4g}"))
                rmsd = o["rmsd_to_reference"][np.isfinite(o["rmsd_to_reference"])]
                if rmsd.size:
                    paths.append(plots.plot_marginal_1d(
                        figures_dir / "rmsd.png", rmsd, range=_bulk_range(rmsd),
                        title=f"heavy-atom RMSD to the PDB structure (nm), beta = {beta:.4g}"))
        return paths


@eqx.filter_jit
def _scan_energies(mol: Molecule, zm: ZMatrix, q):
    """Reduced energies (S,) of internal coordinates q (S, n_x), fast atoms grafted."""

    def one(qi):
        X = zm.transform(qi)
        return mol.energy_xy(X, mol.y_init(X))

    return jax.vmap(one)(q)


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


def _align_np(positions: np.ndarray, a: int, b: int, c: int) -> np.ndarray:
    """Positions (n_atoms, 3) moved into the gauge frame (NumPy float64)."""
    pos = np.asarray(positions, dtype=np.float64)
    rel = pos - pos[a]
    ez = rel[b] / np.linalg.norm(rel[b])
    v = rel[c] - np.dot(rel[c], ez) * ez
    ex = v / np.linalg.norm(v)
    ey = np.cross(ez, ex)
    out = rel @ np.stack([ex, ey, ez], axis=0).T
    out[a] = 0.0
    out[b, :2] = 0.0
    out[c, 1] = 0.0
    return out
