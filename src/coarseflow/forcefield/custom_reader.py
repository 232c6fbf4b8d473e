"""OpenMM's custom forces that CHARMM36 creates -> the terms of ``custom_terms``.

A custom force is read only when its energy expression is one of those OpenMM's CHARMM36 files
write (compared without spaces; the per-item parameters by name), with no global parameters
and no cutoff: anything else is refused with the expression named, rather than evaluated
differently from OpenMM. (charmm36_2024.xml's LennardJonesForce asks for a long-range
correction; like a switching function, OpenMM applies it only with a cutoff, so without one it
changes nothing.)
"""

from __future__ import annotations

import math
import re

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.forcefield.custom_terms import (
    HarmonicTorsions,
    LennardJonesPairs,
    LennardJonesTable,
    UreyBradley,
)
from coarseflow.forcefield.geometry import displacements
from coarseflow.forcefield.supported import SUPPORTED, SUPPORTED_FORCES

IMPROPER = "k*(theta-theta0)^2"  # charmm36.xml
IMPROPER_PERIODIC = re.compile(  # charmm36_2024.xml
    r"k\*min\(dtheta,2\*pi-dtheta\)\^2;dtheta=abs\(theta-theta0\);pi=([0-9.eE+-]+)"
)
LJ_PAIR = "4*epsilon*((sigma/r)^12-(sigma/r)^6)"  # CHARMM's 1-4 Lennard-Jones
HARMONIC = "0.5*k*(r-r0)^2"  # the Urey-Bradley terms, as charmm.split_urey_bradley writes them
LJ_TABLE = "acoef(type1,type2)/r^12-bcoef(type1,type2)/r^6"  # a LennardJonesForce, NBFIX


def _compact(expression: str) -> str:
    return "".join(expression.split()).rstrip(";")


def _refuse(kind: str, expression: str, detail: str = "") -> ConfigError:
    return ConfigError(
        f"force field: unsupported force '{kind}' with energy '{expression}'{detail} "
        f"(supported forces: {SUPPORTED_FORCES}; force fields that work: {SUPPORTED})"
    )


def _parameters(count: int, name_of) -> list[str]:
    return [name_of(i) for i in range(count)]


def _no_globals(force, kind: str) -> None:
    if force.getNumGlobalParameters():
        names = [force.getGlobalParameterName(i) for i in range(force.getNumGlobalParameters())]
        raise ConfigError(
            f"force field: {kind} has global parameters {names}; only the expressions of "
            f"OpenMM's CHARMM36 files without global parameters are supported ({SUPPORTED})"
        )


def read_custom_torsions(forces, n_atoms, gather) -> HarmonicTorsions:
    """CustomTorsionForces of CHARMM's harmonic impropers, merged into one term."""
    atoms, k, theta0, kinds = [], [], [], set()
    for force in forces:
        expression = _compact(force.getEnergyFunction())
        if expression == IMPROPER:
            periodic = False
        else:
            found = IMPROPER_PERIODIC.fullmatch(expression)
            if found is None or abs(float(found.group(1)) - math.pi) > 1e-12:
                raise _refuse("CustomTorsionForce", force.getEnergyFunction())
            periodic = True
        _no_globals(force, "CustomTorsionForce")
        names = _parameters(force.getNumPerTorsionParameters(), force.getPerTorsionParameterName)
        if sorted(names) != ["k", "theta0"]:
            raise _refuse(
                "CustomTorsionForce", force.getEnergyFunction(), f" and parameters {names}"
            )
        kinds.add(periodic)
        where = {name: n for n, name in enumerate(names)}
        for t in range(force.getNumTorsions()):
            *quad, params = force.getTorsionParameters(t)
            atoms.append(quad)
            k.append(params[where["k"]])
            theta0.append(params[where["theta0"]])
    if len(kinds) > 1:
        raise ConfigError(
            "force field: CustomTorsionForces with both of CHARMM's improper expressions; "
            "one kind is supported"
        )
    atoms = np.asarray(atoms, dtype=np.int32).reshape(-1, 4)
    start, end = atoms[:, :3].T.reshape(-1), atoms[:, 1:].T.reshape(-1)
    return HarmonicTorsions(
        bonds=displacements(start, end, n_atoms, gather),
        k=_array(k),
        theta0=_array(theta0),
        periodic=kinds.pop(),
    )


def read_custom_bonds(forces, n_atoms, gather) -> tuple:
    """CustomBondForces: CHARMM's 1-4 Lennard-Jones pairs (LennardJonesPairs) and the
    Urey-Bradley terms (UreyBradley), each kind merged into one term."""
    found: dict[str, tuple[list, list, list]] = {LJ_PAIR: ([], [], []), HARMONIC: ([], [], [])}
    wanted = {LJ_PAIR: ["epsilon", "sigma"], HARMONIC: ["k", "r0"]}
    for force in forces:
        expression = _compact(force.getEnergyFunction())
        if expression not in found:
            raise _refuse("CustomBondForce", force.getEnergyFunction())
        _no_globals(force, "CustomBondForce")
        names = _parameters(force.getNumPerBondParameters(), force.getPerBondParameterName)
        if sorted(names) != wanted[expression]:
            raise _refuse("CustomBondForce", force.getEnergyFunction(), f" and parameters {names}")
        where = {name: n for n, name in enumerate(names)}
        pairs, first, second = found[expression]
        a_name, b_name = wanted[expression]  # (epsilon, sigma) or (k, r0)
        for b in range(force.getNumBonds()):
            i, j, params = force.getBondParameters(b)
            pairs.append((i, j))
            first.append(params[where[a_name]])
            second.append(params[where[b_name]])
    terms = []
    pairs, epsilon, sigma = found[LJ_PAIR]
    if pairs:
        pairs = np.asarray(pairs, dtype=np.int32)
        terms.append(
            LennardJonesPairs(
                pairs=displacements(pairs[:, 0], pairs[:, 1], n_atoms, gather),
                sigma=_array(sigma),
                epsilon=_array(epsilon),
            )
        )
    pairs, k, length = found[HARMONIC]
    if pairs:
        pairs = np.asarray(pairs, dtype=np.int32)
        terms.append(
            UreyBradley(
                pairs=displacements(pairs[:, 0], pairs[:, 1], n_atoms, gather),
                length=_array(length),
                k=_array(k),
            )
        )
    return tuple(terms)


def read_custom_nonbonded(forces, n_atoms, gather) -> LennardJonesTable:
    """The one CustomNonbondedForce of a LennardJonesForce (acoef / bcoef tables)."""
    import openmm

    del gather
    if len(forces) > 1:
        raise ConfigError(
            f"force field: the System has {len(forces)} CustomNonbondedForces; only one is "
            "supported"
        )
    (force,) = forces
    kind = "CustomNonbondedForce"
    if _compact(force.getEnergyFunction()) != LJ_TABLE:
        raise _refuse(kind, force.getEnergyFunction())
    _no_globals(force, kind)
    names = _parameters(force.getNumPerParticleParameters(), force.getPerParticleParameterName)
    tables = {
        force.getTabulatedFunctionName(i): force.getTabulatedFunction(i)
        for i in range(force.getNumTabulatedFunctions())
    }
    if (
        names != ["type"]
        or sorted(tables) != ["acoef", "bcoef"]
        or not all(isinstance(t, openmm.Discrete2DFunction) for t in tables.values())
        or force.getNumComputedValues()
        or force.getNumInteractionGroups()
        or force.getNumEnergyParameterDerivatives()
    ):  # a switching function and a long-range correction act only with a cutoff: none here
        raise ConfigError(
            f"force field: {kind} '{force.getEnergyFunction()}' is not a LennardJonesForce as "
            "OpenMM's CHARMM36 writes it (per-particle 'type', Discrete2DFunction tables acoef "
            "and bcoef, no interaction groups or computed values); "
            f"force fields that work: {SUPPORTED}"
        )
    if force.getNumParticles() != n_atoms:
        raise ConfigError(
            f"force field: {kind} has {force.getNumParticles()} particles, the System {n_atoms}"
        )
    coefficients = {}
    for name, table in tables.items():
        xsize, ysize, values = table.getFunctionParameters()
        # OpenMM: values[x + xsize * y] is f(x, y)
        coefficients[name] = np.asarray(values, np.float64).reshape(ysize, xsize).T
    types = np.asarray([force.getParticleParameters(i)[0] for i in range(n_atoms)])
    index = types.astype(np.int64)
    size = coefficients["acoef"].shape
    if not np.all(index == types) or index.min(initial=0) < 0 or np.any(index >= min(size)):
        raise ConfigError(
            f"force field: {kind} has atom types outside its {size[0]} x {size[1]} tables"
        )
    mask = np.triu(np.ones((n_atoms, n_atoms), dtype=bool), k=1)
    for e in range(force.getNumExclusions()):
        i, j = force.getExclusionParticles(e)
        mask[min(i, j), max(i, j)] = False
    a = np.where(mask, coefficients["acoef"][index[:, None], index[None, :]], 0.0)
    b = np.where(mask, coefficients["bcoef"][index[:, None], index[None, :]], 0.0)
    return LennardJonesTable(
        a=_array(a, shape=(n_atoms, n_atoms)),
        b=_array(b, shape=(n_atoms, n_atoms)),
        pair_mask=_array(mask, bool, (n_atoms, n_atoms)),
    )


def _array(values, dtype=np.float64, shape=(-1,)):
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(values, dtype=dtype).reshape(shape))
