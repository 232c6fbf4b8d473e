"""Internal coordinates of the CG atoms (model.internal.ZMatrix) and Molecule.x_bijection."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

pytest.importorskip("openmm")
pytest.importorskip("mdtraj")

from coarseflow.analysis.molecule_report import MoleculeReport  # noqa: E402
from coarseflow.model.flow import FlowSettings, box_flow  # noqa: E402
from coarseflow.model.internal import ZMatrix, zmatrix_placements  # noqa: E402
from coarseflow.targets.molecule import Molecule  # noqa: E402

GS = "tests/data/ace_gly_ser_nme.pdb"


@pytest.fixture(scope="module")
def ala2():
    return Molecule()


def _random_internal(mol, n, seed):
    """n internal coordinate vectors drawn uniformly in the middle of the box (dihedrals: all)."""
    lo, hi = mol.x_bounds()
    u = np.random.default_rng(seed).uniform(size=(n, lo.size))
    dih = np.asarray(mol.x_bijection().kinds) == "dihedral"
    shrink = np.where(dih, 1.0, 0.5)  # bonds and angles within half the box, dihedrals anywhere
    mid = (lo + hi) / 2
    q = mid + shrink * (u - 0.5) * (hi - lo)
    return jnp.asarray(np.clip(q, lo, hi - 1e-9))


@eqx.filter_jit
def _energies(mol, X):
    return jax.vmap(lambda x: mol.energy_xy(x, mol.y_init(x)))(X)


@eqx.filter_jit
def _sample(flow, key):
    X, log_q = flow.sample_and_log_prob(key, (256,))
    return X, log_q, jax.vmap(flow.log_prob)(X)


def test_alanine_zmatrix_layout_and_bounds(ala2):
    zm = ala2.x_bijection()
    assert isinstance(zm, ZMatrix) and zm.shape == (9,)
    assert ala2.x_bijection() is zm  # cached
    # local CG order: C(ACE) 0, N 1, CA 2, C 3, N(NME) 4; gauge N, CA, C
    assert zm.gauge == (1, 2, 3)
    assert zm.placements == ((0, 1, 2, 3), (4, 3, 2, 1))  # phi, then psi (reversed)
    assert zm.kinds == ("bond", "bond", "angle", "bond", "angle", "dihedral") + (
        "bond",
        "angle",
        "dihedral",
    )
    lo, hi = ala2.x_bounds()
    X, _ = ala2.partition.split(ala2.reference_x)
    q = np.asarray(zm.inverse(X))
    assert np.all((lo < q) & (q < hi))
    kinds = np.asarray(zm.kinds)
    np.testing.assert_allclose((hi - lo)[kinds == "bond"], 0.06)
    np.testing.assert_allclose((hi - lo)[kinds == "angle"], 1.2)  # no clipping at the reference
    np.testing.assert_allclose((hi - lo)[kinds == "dihedral"], 2 * math.pi)
    np.testing.assert_allclose(lo[kinds == "dihedral"], np.asarray(zm.seams))
    np.testing.assert_array_equal(ala2.x_periodic(), kinds == "dihedral")  # uniform base there
    # the seams sit in the sparsely populated directions of alanine dipeptide's (phi, psi)
    # map (reference data: phi in (0, 30) deg and psi in (-150, -90) deg hold < 0.1 %)
    seams = np.degrees(np.asarray(zm.seams))
    assert -10 < seams[0] < 30 and -150 < seams[1] < -90
    # the Cartesian box is still available
    clo, chi = ala2.cartesian_x_bounds()
    np.testing.assert_allclose(chi - clo, np.where(chi - clo < 0.2, 0.1, 0.8))


def test_round_trips_and_log_det(ala2):
    zm = ala2.x_bijection()
    X_ref, _ = ala2.partition.split(ala2.reference_x)
    q = jnp.concatenate([zm.inverse(X_ref)[None], _random_internal(ala2, 7, 0)])
    fwd = jax.jit(jax.vmap(zm.transform_and_log_det))
    inv = jax.jit(jax.vmap(zm.inverse_and_log_det))
    X, ld = fwd(q)
    q2, ld_inv = inv(X)
    np.testing.assert_allclose(np.asarray(q2), np.asarray(q), atol=1e-10)
    np.testing.assert_allclose(np.asarray(ld_inv), -np.asarray(ld), atol=1e-10)
    # Cartesian -> internal -> Cartesian on perturbed conformations
    Xp = X + 0.003 * jr.normal(jr.key(1), X.shape)
    Xp2, _ = fwd(inv(Xp)[0])
    np.testing.assert_allclose(np.asarray(Xp2), np.asarray(Xp), atol=1e-10)
    np.testing.assert_allclose(np.asarray(X[0]), np.asarray(X_ref), atol=1e-10)
    # log|det J| against autodiff
    jac = jax.jit(jax.vmap(jax.jacfwd(zm.transform)))(q)
    _, want = np.linalg.slogdet(np.asarray(jac))
    np.testing.assert_allclose(np.asarray(ld), want, rtol=1e-9, atol=1e-9)
    # differentiable
    g = jax.jit(
        jax.grad(
            lambda v: jnp.sum(zm.transform_and_log_det(v)[0] ** 2) + zm.transform_and_log_det(v)[1]
        )
    )(q[1])
    assert np.all(np.isfinite(np.asarray(g)))
    # dihedrals outside the window come back wrapped into it
    shifted = q.at[:, zm.dihedral_slots].add(2 * math.pi)
    np.testing.assert_allclose(np.asarray(inv(fwd(shifted)[0])[0]), np.asarray(q), atol=1e-10)


def test_dihedrals_are_phi_and_psi(ala2):
    zm = ala2.x_bijection()
    q = _random_internal(ala2, 16, 2)
    X = jax.vmap(zm.transform)(q)
    x = jax.vmap(lambda v: ala2.partition.merge(v, ala2.y_init(v)))(X)
    o = MoleculeReport(ala2).observables(np.asarray(x))

    def wrapped(a):
        return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi

    slots = zm.dihedral_slots
    np.testing.assert_allclose(wrapped(o["phi"][:, 0] - q[:, slots[0]]), 0.0, atol=1e-9)
    np.testing.assert_allclose(wrapped(o["psi"][:, 0] - q[:, slots[1]]), 0.0, atol=1e-9)


def test_untrained_flow_energies_internal_vs_cartesian(ala2):
    settings = FlowSettings(layers=2, nn_width=16, nn_depth=1)
    zm = ala2.x_bijection()
    lo, hi = ala2.x_bounds()
    flow = box_flow(jr.key(0), lower=lo, upper=hi, settings=settings, output=zm)
    X, log_q, log_q_inverse = _sample(flow, jr.key(1))
    u = np.asarray(_energies(ala2, X))
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(np.asarray(log_q)))
    # log q(X) by the inverse (as importance weights use it) agrees with the sampling path
    np.testing.assert_allclose(np.asarray(log_q_inverse), np.asarray(log_q), rtol=1e-8, atol=1e-8)
    # Cartesian box: the same flow without the bijection
    clo, chi = ala2.cartesian_x_bounds()
    cart = box_flow(jr.key(0), lower=clo, upper=chi, settings=settings)
    u_cart = np.asarray(_energies(ala2, _sample(cart, jr.key(1))[0]))
    # measured (these seeds, 256 samples): internal coordinates: median ~ 14, 82 % below 100,
    # 90th percentile ~ 2e2; Cartesian box: median ~ 5e3, 1 % below 100, 90th percentile ~ 1e8
    assert np.median(u) < 100 and np.mean(u < 100) > 0.6
    assert np.median(u_cart) > 1e3 and np.mean(u_cart < 100) < 0.1


def test_second_molecule_backbone():
    m = Molecule(pdb=GS, cg_selection="backbone")
    zm = m.x_bijection()
    assert zm is not None and zm.shape == (m.partition.n_x,) == (30,)
    X_ref, _ = m.partition.split(m.reference_x)
    q = zm.inverse(X_ref)
    lo, hi = m.x_bounds()
    assert np.all((lo < np.asarray(q)) & (np.asarray(q) < hi))
    np.testing.assert_allclose(np.asarray(zm.transform(q)), np.asarray(X_ref), atol=1e-10)
    ld = zm.transform_and_log_det(q)[1]
    _, want = np.linalg.slogdet(np.asarray(jax.jacfwd(zm.transform)(q)))
    assert float(ld) == pytest.approx(want, rel=1e-9)
    qs = _random_internal(m, 8, 3)
    u = np.asarray(_energies(m, jax.vmap(zm.transform)(qs)))
    assert np.all(np.isfinite(u))


def test_disconnected_cg_atoms_fall_back_to_cartesian():
    # C(ACE), CA, N(NME): no two bonded -> no Z-matrix, the Cartesian box
    sel = "(resname ACE and name C) or (resname ALA and name CA) or (resname NME and name N)"
    m = Molecule(cg_selection=sel)
    assert m.x_bijection() is None
    lo, hi = m.x_bounds()
    np.testing.assert_allclose(lo, m.cartesian_x_bounds()[0])
    assert not np.any(m.x_periodic())
    bonded = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    ref = np.array([[0, 0, 0], [0, 0, 1.0], [1.0, 0, 1.5], [2.0, 1.0, 0]])
    assert zmatrix_placements(bonded, (0, 1, 2), ref) is None


def test_zmatrix_checks_its_layout():
    with pytest.raises(ValueError, match="placement"):
        ZMatrix(4, (0, 1, 2), [(3, 0, 1, 3)], list(range(2, 8)) + [9, 10, 11][:0] + [11])
    with pytest.raises(ValueError, match="x_index"):
        ZMatrix(4, (0, 1, 2), [(3, 0, 1, 2)], [5, 6, 8, 9, 10, 10])


@pytest.mark.parametrize("pdb, selection", [("alanine_dipeptide", None), (GS, "backbone")])
def test_fast_atom_internal_coordinates_round_trip_with_exact_log_det(pdb, selection):
    m = Molecule(pdb=pdb, cg_selection=selection)
    X, Y = m.partition.split(m.reference_x)
    key = jr.key(4)
    Xs = X + 0.01 * jr.normal(jr.fold_in(key, 0), (6,) + X.shape)
    Ys = Y + 0.01 * jr.normal(jr.fold_in(key, 1), (6,) + Y.shape)
    xi = jax.vmap(m.y_internal)(Xs, Ys)
    Y2, ld = jax.vmap(m.y_cartesian)(Xs, xi)
    np.testing.assert_allclose(np.asarray(Y2), np.asarray(Ys), atol=1e-10)
    # log|det dY/dxi| against autodiff
    jac = jax.vmap(jax.jacfwd(lambda x_, v: m.y_cartesian(x_, v)[0], argnums=1))(Xs, xi)
    _, want = np.linalg.slogdet(np.asarray(jac))
    np.testing.assert_allclose(np.asarray(ld), want, rtol=1e-9, atol=1e-9)
    # every fast atom is placed once; a full turn of a dihedral gives the same atoms
    periodic = m.y_periodic()
    assert periodic.sum() == len(m.fast_atoms) and xi.shape[-1] == m.partition.n_y
    turned = xi.at[:, np.flatnonzero(periodic)].add(2 * math.pi)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(m.y_cartesian)(Xs, turned)[0]), np.asarray(Ys), atol=1e-10
    )
    # every placement distance is a bond: 0.09-0.16 nm in the reference structure
    r = np.asarray(m.y_internal(X, Y)[0::3])
    assert np.all((r > 0.09) & (r < 0.16))


def test_methyl_rotors_are_equivalent_and_the_domain_holds_one_relabeling(ala2):
    rotors = ala2.info.rotors
    names = sorted(str(ala2.topology.atom(c)) for c, *_ in rotors)
    assert names == ["ACE1-CH3", "ALA2-CB", "NME3-C"] and ala2.y_symmetry_number() == 27
    X, Y = ala2.partition.split(ala2.reference_x)
    rng = np.random.default_rng(5)
    fast = np.asarray(ala2.fast_atoms)
    in_domain = jax.jit(lambda x_, y_, r_: ala2.y_in_domain(x_, y_, r_))
    energy = jax.jit(lambda x_, y_: ala2.energy_xy(x_, y_))
    for _ in range(4):
        Yp = Y + 0.02 * rng.standard_normal(Y.shape)
        # relabel every methyl's hydrogens by every cyclic shift: 27 copies of one geometry
        pos = np.asarray(Yp).reshape(-1, 3)
        slot = {int(a): n for n, a in enumerate(fast)}
        shifts = np.stack(np.meshgrid(*[range(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
        hits, energies = 0, []
        for shift in shifts:
            q = pos.copy()
            for s, (_, _, _, hs) in zip(shift, rotors, strict=True):
                q[[slot[h] for h in hs]] = pos[[slot[h] for h in np.roll(hs, s)]]
            hits += bool(in_domain(X, jnp.asarray(q.reshape(-1)), Y))
            energies.append(float(energy(X, jnp.asarray(q.reshape(-1)))))
        assert hits == 1
        np.testing.assert_allclose(energies, energies[0], rtol=1e-10)


def test_equivalent_rotors_tolerate_rounding_but_not_other_parameters():
    from coarseflow.targets.molecule import equivalent_rotors

    # l - k - c with three terminal atoms on c; energy 100 + sum_i a_i |r_i|^2
    ref = np.array(
        [[0, 0, 0], [1, 0, 0], [2, 0, 0], [2.5, 1, 0], [2.6, -0.5, 0.9], [2.4, -0.5, -0.9]],
        dtype=float,
    )
    hops = np.full((6, 6), 2)
    for i, j in [(0, 1), (1, 2), (2, 3), (2, 4), (2, 5)]:
        hops[i, j] = hops[j, i] = 1

    def rotors(a_terminals):
        a = jnp.asarray([1.0, 1.0, 1.0, *a_terminals])
        ff = type(
            "FF",
            (),
            {
                "energy": staticmethod(
                    lambda x: 100.0 + jnp.sum(a * jnp.sum(jnp.asarray(x) ** 2, axis=1))
                )
            },
        )
        return equivalent_rotors(ff, hops, np.array([3, 4, 5]), ref)

    assert rotors([0.5, 0.5, 0.5]) == ((2, 1, 0, (3, 4, 5)),)
    # float32-sized differences (~1e-6 of the energy) still count as equivalent ...
    assert rotors([0.5, 0.5, 0.5 + 1e-4]) == ((2, 1, 0, (3, 4, 5)),)
    # ... different parameters do not
    assert rotors([0.5, 0.5, 0.6]) == ()


def test_relabelings_are_the_27_methyl_permutations_and_the_learned_density_is_symmetric(ala2):
    from coarseflow.model.conditional import ConditionalSettings, make_conditional

    perms = ala2.y_relabelings()
    assert perms.shape == (27, ala2.partition.n_y)
    np.testing.assert_array_equal(perms[0], np.arange(ala2.partition.n_y))
    assert len({tuple(p) for p in perms}) == 27
    assert all(sorted(p) == list(range(ala2.partition.n_y)) for p in perms)
    X, Y = ala2.partition.split(ala2.reference_x)
    Y = Y + 0.01 * np.random.default_rng(2).standard_normal(Y.shape)
    energy = jax.jit(jax.vmap(lambda y_: ala2.energy_xy(X, y_)))
    u = np.asarray(energy(jnp.asarray(Y)[perms]))
    np.testing.assert_allclose(u, u[0], rtol=1e-10)
    cond = make_conditional(jr.key(0), ala2, ConditionalSettings(kind="gaussian", nn_width=8))
    cond = eqx.tree_at(lambda c: c.log_diag, cond, jnp.full(ala2.partition.n_y, -3.0))
    draw = jax.jit(lambda k: cond.sample(k, ala2, X, 1.0))(jr.key(1))
    assert bool(draw.valid)
    log_q = jax.jit(jax.vmap(lambda y_: cond.log_prob(ala2, X, 1.0, y_)))(draw.Y[perms])
    np.testing.assert_allclose(log_q, draw.log_q, rtol=1e-9)


def test_methyl_relabelings_permute_the_internal_coordinates(ala2):
    """One shared frame per methyl: relabeling Y permutes xi's triples, keeps the log-det, and
    the learned density's one-transform sum equals the sum over 27 transforms."""
    from coarseflow.model.conditional import ConditionalSettings, make_conditional

    perms, xi_perms = ala2.y_relabelings(), ala2.y_internal_relabelings()
    assert xi_perms is not None and xi_perms.shape == perms.shape
    assert np.any(xi_perms != np.arange(ala2.partition.n_y))  # not the identity
    X, Y = ala2.partition.split(ala2.reference_x)
    Y = Y + 0.01 * np.random.default_rng(3).standard_normal(Y.shape)
    internal = jax.jit(jax.vmap(lambda y_: ala2.y_internal(X, y_)))
    xi = np.asarray(internal(jnp.asarray(Y)[None]))[0]
    relabeled = np.asarray(internal(jnp.asarray(Y)[perms]))
    d = relabeled - xi[xi_perms]
    periodic = ala2.y_periodic()
    d[:, periodic] = np.mod(d[:, periodic] + math.pi, 2 * math.pi) - math.pi
    np.testing.assert_allclose(d, 0.0, atol=1e-10)
    log_det = jax.jit(jax.vmap(lambda v: ala2.y_cartesian(X, v)[1]))(jnp.asarray(relabeled))
    np.testing.assert_allclose(log_det, log_det[0], rtol=1e-12)

    cond = make_conditional(jr.key(0), ala2, ConditionalSettings(kind="gaussian", nn_width=8))
    cond = eqx.tree_at(
        lambda c: (c.log_diag, c.lower),
        cond,
        (jnp.full(ala2.partition.n_y, -2.0), 0.05 * jr.normal(jr.key(5), cond.lower.shape)),
    )
    draws = jax.jit(jax.vmap(lambda k: cond.sample(k, ala2, X, 0.5)))(jr.split(jr.key(2), 4))

    def slow(y_):
        logs = jax.vmap(
            lambda p: cond._log_prob0(ala2, X, 0.5, y_[p], cond._gaussian(ala2, X, 0.5))
        )(perms)
        return jax.nn.logsumexp(logs) - math.log(len(perms))

    fast = jax.jit(jax.vmap(lambda y_: cond.log_prob(ala2, X, 0.5, y_)))(draws.Y)
    want = jax.jit(jax.vmap(slow))(draws.Y)
    np.testing.assert_allclose(fast, want, rtol=1e-10)
    # and the grouped sum (model.gaussian), which a larger peptide takes: the same numbers
    from coarseflow.model import conditional as module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "worth_it", lambda groups, n: True)
        grouped = jax.jit(jax.vmap(lambda y_: cond.log_prob(ala2, X, 0.5, y_)))(draws.Y)
    np.testing.assert_allclose(grouped, want, rtol=1e-10)
