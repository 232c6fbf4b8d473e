"""The Molecule target: a PDB file (or Amber prmtop) in an OpenMM force field, x = free Cartesian
coordinates (nm) of the gauge frame.

OpenMM and mdtraj are needed to build a Molecule; the energy itself is the pure-JAX
:class:`coarseflow.forcefield.ForceField`.
"""

from __future__ import annotations

import math
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import mdtraj
import numpy as np
from jaxtyping import Array, Bool, Float

from coarseflow.forcefield import ForceField
from coarseflow.model.internal import AtomPlacements, ZMatrix
from coarseflow.model.linear_map import LinearMap
from coarseflow.partition import Partition
from coarseflow.targets.base import AbstractTarget
from coarseflow.targets.molecule import io, rotamers, symmetry, topology, zmatrix
from coarseflow.targets.molecule.gauge import GaugeFrame, held_coordinates
from coarseflow.targets.molecule.parts import molecule_parts

GAUGE_MARGIN = 0.05  # nm: box half-width for the free coordinates of gauge atoms b and c


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
    k_B = ``coarseflow.units.MOLAR_GAS_CONSTANT`` (OpenMM's value).
    """

    partition: Partition = eqx.field(static=True)
    forcefield: ForceField
    reference_x: Float[Array, " n"]
    masses: Float[Array, " n_atoms"]
    gauge: GaugeFrame
    zmatrix: ZMatrix | None
    y_placements: AtomPlacements | None
    temperature: float = eqx.field(static=True)
    kT: float = eqx.field(static=True)
    box_margin: float = eqx.field(static=True)
    info: topology.MoleculeInfo = eqx.field(static=True)

    def __init__(
        self,
        pdb: str | None = None,
        forcefield: tuple[str, ...] | None = None,
        temperature: float = 300.0,
        cg_selection: str | None = None,
        sequence: str | None = None,
        cg_dihedrals: tuple[str, ...] | None = None,
        fixed_atoms: tuple[int, ...] | None = None,
        box_margin: float = 0.4,
        reference: str | None = None,
    ):
        """The ``[target]`` table of ``kind = "molecule"``.

        pdb: a built-in name ("alanine_dipeptide": ACE-ALA-NME, 22 atoms, shipped with the
            package; "alanine_dipeptide_implicit": openmmtools' AlanineDipeptideImplicit, Amber
            ff96 in OBC1, docs/molecules.md) or a path to a PDB file with hydrogens (relative
            to the current directory), or to an Amber prmtop with its .inpcrd beside it.
            Default (and no ``sequence``): "alanine_dipeptide".
        forcefield: OpenMM force-field XML files (OpenMM's bundled names or paths; default
            amber99sbildn.xml + amber99_obc.xml); for a prmtop only its implicit solvent,
            "OBC1" (default), "OBC2" or "vacuum" (see forcefield.build_system).
        temperature: kelvin; the target beta = 1 is this temperature.
        cg_selection: mdtraj selection of the coarse-grained atoms (X). Default: for
            alanine_dipeptide the five atoms defining phi and psi,
            ``(resname ACE and name C) or (resname ALA and name N CA C) or (resname NME and
            name N)``; for any other peptide the atoms of every backbone phi / psi
            (``selection.default_cg_selection``); for a structure without them ``backbone``.
        sequence: instead of ``pdb``, a peptide built from its sequence ("ACE-ALA-ALA-NME" or
            one-letter "AA", capped with ACE / NME; ``peptide.parse_sequence``) in
            ``forcefield``, minimised, kept in ``peptide.cache_dir()``.
        cg_dihedrals: dihedrals that must be functions of X alone: "phi" / "psi" / "chi1" ..
            "chi5" (every residue's) or one, "psi ALA2", "chi1 SER2" (the default selection
            then includes its atoms); ConfigError naming the dihedral and the
            atoms cg_selection leaves out. Default: nothing checked.
        fixed_atoms: 3 CG atom indices (0-based, PDB order) (a, b, c) of the gauge frame
            (see the class docstring); default: chosen automatically.
        box_margin: half-width (nm) of the flow's Cartesian box around the reference CG
            coordinates (used only when the CG atoms have no Z-matrix; see x_bounds).
        reference: optional .npz with ``phi``, ``psi`` (radians, (frames,) or (frames, m)) and
            optional ``rg`` (nm), ``basins`` + ``populations_err``, ``chain`` (+ ``settings``
            with n_blocks: every residue's reference errors) at ``temperature`` (as
            ``coarseflow reference`` writes it; a built-in name such as "alanine_dipeptide"
            means the shipped ``data/<name>_reference.npz``); evaluation then compares the
            beta = 1 model with it.
        """
        parts = molecule_parts(
            pdb,
            forcefield,
            temperature,
            cg_selection,
            sequence,
            cg_dihedrals,
            fixed_atoms,
            box_margin,
            reference,
        )
        self.partition = parts.partition
        self.forcefield = parts.forcefield
        self.reference_x = parts.reference_x
        self.masses = parts.masses
        self.gauge = parts.gauge
        self.temperature = parts.temperature
        self.kT = parts.kT
        self.box_margin = parts.box_margin
        self.zmatrix = parts.zmatrix
        self.y_placements = parts.y_placements
        self.info = parts.info
        rotamers.warn_if_multimodal(self)

    # ---- what the molecule is ----------------------------------------------------------------

    @property
    def n_atoms(self) -> int:
        return self.gauge.n_atoms

    @property
    def fixed_atoms(self) -> tuple[int, int, int]:
        """The gauge atoms (a, b, c) (see the class docstring)."""
        return self.gauge.fixed_atoms

    @property
    def free_indices(self) -> tuple[int, ...]:
        """Flat index (3 atom + component) of each coordinate of x."""
        return self.gauge.free_indices

    @property
    def held_coordinates(self) -> tuple[int, ...]:
        """The 6 flat indices (3 atom + component) held at 0: a x,y,z; b x,y; c y."""
        return held_coordinates(*self.fixed_atoms)

    @property
    def cg_atoms(self) -> tuple[int, ...]:
        return self.info.cg_atoms

    @property
    def fast_atoms(self) -> tuple[int, ...]:
        return self.gauge.fast_atoms

    @property
    def cg_selection(self) -> str:
        return self.info.cg_selection

    @property
    def pdb_path(self) -> str:
        return self.info.pdb_path

    @property
    def topology(self) -> mdtraj.Topology:
        """The mdtraj Topology of the PDB file (atoms in the PDB's order)."""
        return self.info.topology

    @property
    def residue_labels(self) -> list[str]:
        """Names (resname + number) of the residues that have both phi and psi."""
        return list(self.info.residue_labels)

    # ---- coordinates -------------------------------------------------------------------------

    def full_positions(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n_atoms 3"]:
        """Positions (..., n_atoms, 3) in nm of free coordinates x (..., n): held ones are 0."""
        return self.gauge.full_positions(x)

    def free_coordinates(
        self, positions: Float[Array, "*batch n_atoms 3"]
    ) -> Float[Array, "*batch n"]:
        """Free coordinates x (..., n) of any positions (..., n_atoms, 3) in nm.

        The positions are first moved into the gauge frame by a rigid motion (translate a to the
        origin, rotate b onto +z and c into the xz-plane with x > 0), so rotated and translated
        copies of a structure give the same x, and free_coordinates(full_positions(x)) == x for
        x with c at x > 0 (the case for every x near the reference).
        """
        return self.gauge.free_coordinates(positions)

    def write_trajectory(self, path, x: Float[Array, "N n"]) -> list[Path]:
        """Write configurations x (N, n) as a .pdb (all frames) or .dcd trajectory via mdtraj.

        Every atom in the PDB's order and topology, the held coordinates restored, positions in
        nm (the gauge frame). For .dcd, a one-frame topology file ``path.with_suffix('.pdb')``
        is written next to it. Returns the paths written.
        """
        positions = self.full_positions(np.asarray(x, dtype=np.float64))
        return io.write_trajectory(path, self.topology, np.asarray(positions))

    # ---- the target interface ----------------------------------------------------------------

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """Reduced energy u = U(full_positions(x)) / (k_B T) of one configuration x (n,)."""
        x = jnp.asarray(x)
        if x.ndim != 1:
            raise ValueError(
                f"x: expected one configuration of shape ({self.n},), got "
                f"{x.shape}; batch with jax.vmap"
            )
        return self.positions_energy(self.full_positions(x))

    # ---- a learnable linear map of the atoms (coarseflow.model.linear_map) --------------------

    def positions_energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        """Reduced energy () of atom positions (n_atoms, 3) in nm, in any rigid placement."""
        return self.forcefield.energy(positions) / self.kT

    def mapped_coordinates(
        self, linear_map: LinearMap, x: Float[Array, " n"]
    ) -> tuple[Float[Array, " n"], Float[Array, ""]]:
        """(x' (n,), log|det dx'/dx| ()): the free coordinates of W R (R = full_positions(x),
        x (n,) latent, nm), W R moved rigidly back into the gauge frame (c at x > 0, as for
        every x the flow proposes). x, x' live on the gauge slice, where moving rigidly has the
        volume factor v = |r_ab|^2 d_c (class docstring); W maps the rigid copies of R onto
        those of W R, so |det dx'/dx| = |det W|^3 v(R) / v(W R), not |det W|^3 alone."""
        a, b, c = self.fixed_atoms

        def log_v(p):  # log(|r_ab|^2 d_c) = log|r_ab| + log|r_ab x r_ac|
            ab, ac = p[b] - p[a], p[c] - p[a]
            return jnp.log(jnp.linalg.norm(ab)) + jnp.log(jnp.linalg.norm(jnp.cross(ab, ac)))

        R = self.full_positions(x)
        r = linear_map(R)
        return self.free_coordinates(r), linear_map.log_det() + log_v(R) - log_v(r)

    def unmapped_coordinates(self, linear_map: LinearMap, x: Float[Array, " n"]) -> Array:
        """The latent free coordinates (n,) whose :meth:`mapped_coordinates` are x (n,)."""
        return self.free_coordinates(linear_map.inverse(self.full_positions(x)))

    def x_bijection(self) -> ZMatrix | None:
        """Internal -> Cartesian coordinates of the CG atoms (coarseflow.model.internal.ZMatrix).

        Internal coordinates: r_ab; r_bc, angle abc; then (bond length r_ij, bond angle ijk,
        dihedral ijkl) for every other CG atom i, breadth-first over the bonds between CG atoms
        from the gauge atoms (j bonded to i, k bonded to j, l bonded to k when possible).
        Each dihedral's window [seam, seam + 2 pi) starts at the least populated direction of a
        rigid torsion scan of the reference structure (``zmatrix.dihedral_seams``), done once
        when the Molecule is built.

        None (the flow works in Cartesian X) when some CG atom cannot be reached through bonds
        between CG atoms from the gauge atoms, or the gauge atoms are not bonded a-b-c.
        """
        return self.zmatrix

    def x_periodic(self) -> np.ndarray:
        """(n_x,) bool: the CG dihedrals (phi, psi for alanine) when X is internal coordinates."""
        if self.zmatrix is None:
            return super().x_periodic()
        return np.asarray(self.zmatrix.kinds) == "dihedral"

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (n_x,): the box of the flow over X, in x_bijection's coordinates.

        With internal coordinates (``x_bijection()`` not None): bond lengths at the reference
        -+ 0.03 nm, bond angles at the reference -+ 0.6 rad clipped to (0.05, pi - 0.05),
        dihedrals [seam, seam + 2 pi) (``zmatrix.internal_box``).

        Otherwise (Cartesian X): reference free CG coordinates -+ box_margin nm. The three free
        coordinates of the gauge atoms b and c (b's z, c's x and z) only follow the vibrations
        of the a-b and b-c bonds and the a-b-c angle, so their margin is GAUGE_MARGIN (0.05 nm)
        when that is smaller: the flow then never proposes broken bonds.
        """
        if self.zmatrix is not None:
            X_ref, _ = self.partition.split(self.reference_x)
            return zmatrix.internal_box(self.zmatrix, X_ref)
        return self.cartesian_x_bounds()

    def cartesian_x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The Cartesian box of X (see x_bounds), whether or not x_bijection is used."""
        x_idx = np.asarray(self.partition.x_indices)
        ref = np.asarray(self.reference_x, dtype=np.float64)[x_idx]
        flat = np.asarray(self.gauge.x_flat)  # flat xyz index of each X coordinate
        _, b, c = self.fixed_atoms
        gauge = np.isin(flat // 3, [b, c])
        margin = np.where(gauge, min(GAUGE_MARGIN, self.box_margin), self.box_margin)
        return ref - margin, ref + margin

    def y_init(self, X: Float[Array, " n_x"]) -> Float[Array, " n_y"]:
        """Fast-atom coordinates (n_y,) grafted onto the CG atoms of X (n_x,).

        Each fast atom keeps its reference-structure position in a local frame of three CG atoms
        (its nearest along the bonds; ``gauge.graft_frames``), so hydrogens and side chains
        follow the backbone wherever the flow puts it. Smooth (away from collinear frame atoms),
        jit-able, vmap-able.
        """
        return self.gauge.graft(X)

    def y_internal(self, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]) -> Float[Array, " n_y"]:
        """Bond length, angle and dihedral (nm, rad) of every fast atom, placed breadth-first
        over the bonds from the CG atoms (``coarseflow.model.internal.AtomPlacements``); Y
        itself when some fast atom is not bonded to the rest."""
        if self.y_placements is None:
            return super().y_internal(X, Y)
        return self.y_placements.internal(self.full_positions(self.partition.merge(X, Y)))

    def y_cartesian(self, X, xi):
        if self.y_placements is None:
            return super().y_cartesian(X, xi)
        return self.y_placements.cartesian(self.gauge.cg_positions(X), xi)

    def y_periodic(self) -> np.ndarray:
        return super().y_periodic() if self.y_placements is None else self.y_placements.periodic

    def y_symmetry_number(self) -> int:
        """The product of the sizes of the equivalent-rotor groups (3 per methyl group)."""
        return math.prod(len(r.terminals) for r in self.info.rotors)

    def _relabeling_maps(self) -> list[dict[int, int]]:
        return symmetry.relabeling_maps(self.info.rotors, self._y_flat())

    def _y_flat(self) -> np.ndarray:
        """Flat index (3 atom + component) of each coordinate of Y."""
        return np.asarray(self.free_indices)[np.asarray(self.partition.y_indices)]

    def y_relabelings(self) -> np.ndarray:
        """(S, n_y) int: every combination of cyclic shifts of each equivalent-rotor group's
        terminal atoms (a methyl's hydrogens), as permutations of Y; the identity first."""
        return symmetry.cartesian_relabelings(self._relabeling_maps(), self._y_flat())

    def y_internal_relabelings(self) -> np.ndarray | None:
        """(S, n_y) int: y_relabelings() acting on xi, y_internal(X, Y[sigma]) =
        y_internal(X, Y)[pi], when every relabeled atom is placed from atoms no relabeling
        moves and shares its frame with the atoms it trades places with
        (``zmatrix.share_rotor_frames`` makes it so for methyls); else None."""
        if self.y_placements is None:
            return self.y_relabelings()
        return symmetry.internal_relabelings(self.y_placements, self._relabeling_maps())

    def y_in_domain(self, X, Y, Y_ref) -> Bool[Array, ""]:
        """For every group of equivalent terminal atoms (a methyl's hydrogens), its first atom
        is the one whose dihedral about the rotor's bond is nearest that of the first atom in
        Y_ref (``symmetry.in_rotor_domain``): exactly one relabeling is in the domain."""
        pos = self.full_positions(self.partition.merge(X, Y))
        ref = self.full_positions(self.partition.merge(X, Y_ref))
        return symmetry.in_rotor_domain(pos, ref, self.info.rotors)

    def y_mass(self) -> Float[Array, " n_y"]:
        """Atomic masses (amu) of the fast atoms, repeated for x, y, z: (n_y,)."""
        return jnp.repeat(self.masses[np.asarray(self.fast_atoms)], 3)
