"""The gauge frame: free coordinates x <-> atom positions, and the fast atoms grafted onto the CG
atoms.

Rigid-body motion is removed by holding six coordinates of three CG atoms (a, b, c) at 0: a at
the origin, b on the +z axis, c in the xz-plane. Flat index of atom i's component k is 3 i + k.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from coarseflow.targets.molecule.topology import distance_from_axis


def held_coordinates(a: int, b: int, c: int) -> tuple[int, ...]:
    """The 6 flat indices held at 0: a x,y,z; b x,y; c y."""
    return (3 * a, 3 * a + 1, 3 * a + 2, 3 * b, 3 * b + 1, 3 * c + 1)


def align_to_gauge(positions: np.ndarray, a: int, b: int, c: int) -> np.ndarray:
    """Positions (n_atoms, 3) moved rigidly into the gauge frame (NumPy float64)."""
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


def _frame(p, q, r, xp):
    """Orthonormal frame (..., 3, 3), rows e1 = (q - p)^, e2 in the pqr plane, e3 = e1 x e2."""
    e1 = q - p
    e1 = e1 / xp.linalg.norm(e1, axis=-1, keepdims=True)
    v = r - p
    e2 = v - xp.sum(v * e1, axis=-1, keepdims=True) * e1
    e2 = e2 / xp.linalg.norm(e2, axis=-1, keepdims=True)
    return xp.stack([e1, e2, xp.cross(e1, e2)], axis=-2)


def graft_frames(cg, fast, ref, hops) -> np.ndarray:
    """(n_fast, 3) CG atoms (p, q, r) whose frame carries each fast atom.

    Candidates are ordered by number of bonds to the fast atom, then by distance in the reference
    structure; p and q are the first two, r the next one clearly off the p-q line.
    """
    out = []
    for i in fast:
        order = sorted(cg.tolist(), key=lambda j: (hops[i, j], np.linalg.norm(ref[j] - ref[i])))
        p, q = order[0], order[1]
        for r in order[2:]:
            d = distance_from_axis(ref[p], ref[q], ref[r])
            if d > 0.1 * np.linalg.norm(ref[r] - ref[p]):
                break
        else:  # all off-line candidates exhausted: any non-collinear one (exists, see gauge)
            r = next(j for j in order if distance_from_axis(ref[p], ref[q], ref[j]) > 1e-3)
        out.append((p, q, r))
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


class GaugeFrame(eqx.Module):
    """Free coordinates x (n,) <-> positions (n_atoms, 3) nm, and the graft of the fast atoms.

    ``free_indices``: flat index of each coordinate of x (the held ones left out);
    ``x_flat``: flat index of each CG coordinate X; ``graft_frames`` (n_fast, 3) and
    ``graft_local`` (n_fast, 3): each fast atom's position in the frame of three CG atoms in
    the reference structure.
    """

    n_atoms: int = eqx.field(static=True)
    fixed_atoms: tuple[int, int, int] = eqx.field(static=True)
    free_indices: tuple[int, ...] = eqx.field(static=True)
    x_flat: tuple[int, ...] = eqx.field(static=True)
    fast_atoms: tuple[int, ...] = eqx.field(static=True)
    graft_frames: tuple[tuple[int, int, int], ...] = eqx.field(static=True)
    graft_local: Float[Array, "n_fast 3"]

    def __init__(self, ref_gauge: np.ndarray, fixed_atoms, cg: np.ndarray, hops: np.ndarray):
        """``ref_gauge``: the reference structure (n_atoms, 3) in the gauge frame of
        ``fixed_atoms``; ``cg``: the CG atoms; ``hops``: bonds between atoms (n_atoms, n_atoms)."""
        n_atoms = int(ref_gauge.shape[0])
        held = set(held_coordinates(*fixed_atoms))
        cg_set = set(int(i) for i in cg)
        self.n_atoms = n_atoms
        self.fixed_atoms = tuple(int(i) for i in fixed_atoms)
        self.free_indices = tuple(i for i in range(3 * n_atoms) if i not in held)
        self.x_flat = tuple(f for f in self.free_indices if f // 3 in cg_set)
        fast = np.asarray([i for i in range(n_atoms) if i not in cg_set], dtype=np.int64)
        self.fast_atoms = tuple(int(i) for i in fast)
        frames = graft_frames(np.asarray(cg), fast, ref_gauge, hops)
        self.graft_frames = tuple(tuple(int(i) for i in f) for f in frames)
        rot = _frame(ref_gauge[frames[:, 0]], ref_gauge[frames[:, 1]], ref_gauge[frames[:, 2]], np)
        local = np.einsum("fij,fj->fi", rot, ref_gauge[fast] - ref_gauge[frames[:, 0]])
        self.graft_local = jnp.asarray(local, dtype=float)

    def full_positions(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch n_atoms 3"]:
        """Positions (..., n_atoms, 3) in nm of free coordinates x (..., n): held ones are 0."""
        x = jnp.asarray(x)
        n = len(self.free_indices)
        if x.shape[-1:] != (n,):
            raise ValueError(f"x: expected shape (..., {n}), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(float)
        flat = jnp.zeros(x.shape[:-1] + (3 * self.n_atoms,), x.dtype)
        flat = flat.at[..., np.asarray(self.free_indices)].set(x)
        return flat.reshape(x.shape[:-1] + (self.n_atoms, 3))

    def free_coordinates(
        self, positions: Float[Array, "*batch n_atoms 3"]
    ) -> Float[Array, "*batch n"]:
        """Free coordinates x (..., n) of any positions (..., n_atoms, 3) in nm, moved into the
        gauge frame first by a rigid motion (c ends up at x > 0)."""
        pos = jnp.asarray(positions)
        if pos.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(f"positions: expected shape (..., {self.n_atoms}, 3), got {pos.shape}")
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

    def cg_positions(self, X: Float[Array, " n_x"]) -> Float[Array, "n_atoms 3"]:
        """Positions (n_atoms, 3) with the CG atoms of X (n_x,) and the fast atoms at 0."""
        X = jnp.asarray(X)
        if not jnp.issubdtype(X.dtype, jnp.floating):
            X = X.astype(float)
        flat = jnp.zeros((3 * self.n_atoms,), X.dtype).at[np.asarray(self.x_flat)].set(X)
        return flat.reshape(self.n_atoms, 3)

    def graft(self, X: Float[Array, " n_x"]) -> Float[Array, " n_y"]:
        """Fast-atom coordinates (n_y,) at their reference places in the frames of the CG atoms
        of X (n_x,). Smooth (away from collinear frame atoms), jit-able, vmap-able."""
        pos = self.cg_positions(X)
        frames = np.asarray(self.graft_frames, dtype=np.int64).reshape(-1, 3)
        p, q, r = pos[frames[:, 0]], pos[frames[:, 1]], pos[frames[:, 2]]
        rot = _frame(p, q, r, jnp)
        local = self.graft_local.astype(pos.dtype)
        fast = p + jnp.einsum("fij,fi->fj", rot, local)
        return fast.reshape(-1)
