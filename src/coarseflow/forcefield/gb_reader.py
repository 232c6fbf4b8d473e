"""Recognise the CustomGBForce of OpenMM's ``implicit/*.xml`` files and read it into AmberGB.

A CustomGBForce is arbitrary algebra; coarseflow evaluates only the five Amber models that
OpenMM writes (``openmm.app.internal.customgbforces``: GBSAHCTForce, GBSAOBC1Force,
GBSAOBC2Force, GBSAGBnForce, GBSAGBn2Force). A force is recognised by rebuilding each model
with this OpenMM and the force's dielectrics and surface term, and comparing parameter names,
computed values, energy terms and tabulated functions as text: anything else, salt
(kappa > 0) included, is refused by name. The model's constants (tanh coefficients, offset,
neck scale and cut-off, Coulomb constant, surface coefficient) are then read from those same
expressions, and the GBn / GBn2 neck tables from the force's own tabulated functions, so
nothing of OpenMM's data is copied here.
"""

from __future__ import annotations

import re

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.forcefield.gb import AmberGB

# Model name -> OpenMM's class name and the implicit-solvent file that builds it.
MODELS = {
    "HCT": ("GBSAHCTForce", "implicit/hct.xml"),
    "OBC1": ("GBSAOBC1Force", "implicit/obc1.xml"),
    "OBC2": ("GBSAOBC2Force", "implicit/obc2.xml"),
    "GBn": ("GBSAGBnForce", "implicit/gbn.xml"),
    "GBn2": ("GBSAGBn2Force", "implicit/gbn2.xml"),
}
_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_DIELECTRICS = r"; solventDielectric=([^;]+); soluteDielectric=([^;]+); kappa=([^;]+);"


def _layout(force) -> tuple:
    """Everything of a CustomGBForce that defines its energy, except the particles."""
    n_functions = force.getNumTabulatedFunctions()
    return (
        [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())],
        [force.getComputedValueParameters(i) for i in range(force.getNumComputedValues())],
        [force.getEnergyTermParameters(i) for i in range(force.getNumEnergyTerms())],
        force.getNumGlobalParameters(),
        sorted(force.getTabulatedFunctionName(i) for i in range(n_functions)),
        force.getNumEnergyParameterDerivatives(),
    )


def _template(model: str, solvent: float, solute: float, surface):
    """OpenMM's own force of ``model`` (no cutoff, no salt), finalized."""
    from openmm.app.internal import customgbforces

    force = getattr(customgbforces, MODELS[model][0])(solvent, solute, surface, None, 0.0)
    if model in ("GBn", "GBn2"):  # their expressions are written at finalize, from particles
        extra = [1.0, 0.8, 4.85] if model == "GBn2" else []
        force.addParticle([0.0, 0.15, 0.8, *extra])
    force.finalize()
    return force


def recognise(force) -> tuple[str, object, float, float] | None:
    """(model, OpenMM's template force, solvent dielectric, solute dielectric) if ``force``
    is one of MODELS without salt, else None."""
    if not force.getNumEnergyTerms():
        return None
    found = re.search(_DIELECTRICS, force.getEnergyTermParameters(0)[0])
    if found is None:
        return None
    try:
        solvent, solute, kappa = (float(found.group(k)) for k in (1, 2, 3))
    except ValueError:
        return None
    if kappa != 0.0:
        return None
    target = _layout(force)
    for model in MODELS:
        for surface in ("ACE", None):
            template = _template(model, solvent, solute, surface)
            if _layout(template) == target:
                return model, template, solvent, solute
    return None


def _number(pattern: str, text: str, model: str) -> float:
    found = re.search(pattern, text)
    if found is None:  # an OpenMM whose models are written differently
        raise ConfigError(
            f"force field: this OpenMM's {model} CustomGBForce is not written as coarseflow "
            f"expects ({pattern!r} not in {text!r})"
        )
    return float(found.group(1))


def _born_constants(model: str, born: str) -> tuple[bool, tuple[float, float, float] | None]:
    """(hct, (alpha, beta, gamma) or None when per particle) from the Born radius's
    expression: '1/(1/or-I)' (HCT) or '1/(1/or-tanh(a*psi-b*psi^2+g*psi^3)/radius)'."""
    if born.startswith("1/(1/or-I)"):
        return True, (0.0, 0.0, 0.0)
    if "tanh(alpha*psi-beta*psi^2+gamma*psi^3)" in born:
        return False, None
    found = re.search(
        rf"tanh\((?:{_NUMBER}\*)?psi(?:-{_NUMBER}\*psi\^2)?\+{_NUMBER}\*psi\^3\)", born
    )
    if found is None:
        raise ConfigError(
            f"force field: this OpenMM's {model} Born radius is not written as coarseflow "
            f"expects: {born!r}"
        )
    # An absent coefficient is 1 for alpha ('tanh(psi...'), 0 for beta (OBC1 has no psi^2).
    alpha, beta, gamma = found.groups()
    return False, (float(alpha or 1.0), float(beta or 0.0), float(gamma))


def _neck_table(force, name: str, index: np.ndarray) -> np.ndarray:
    """The (n, n) entries f(radindex_i, radindex_j) of the Discrete2DFunction ``name``."""
    import openmm

    function = None
    for k in range(force.getNumTabulatedFunctions()):
        if force.getTabulatedFunctionName(k) == name:
            function = force.getTabulatedFunction(k)
            break
    if not isinstance(function, openmm.Discrete2DFunction):
        raise ConfigError(f"force field: CustomGBForce table {name} is not a Discrete2DFunction")
    x_size, y_size, values = function.getFunctionParameters()
    if index.size and (index.min() < 0 or index.max() >= min(x_size, y_size)):
        raise ConfigError(f"force field: CustomGBForce radius index outside the table {name}")
    values = np.asarray(values, dtype=np.float64)
    # OpenMM's Discrete2DFunction: f(x, y) = values[x + x_size * y].
    return values[index[:, None] + x_size * index[None, :]]


def read_amber_gb(force, n_atoms: int, supported: str) -> AmberGB:
    """The AmberGB term of a recognised CustomGBForce; ConfigError (naming ``supported``)
    for any other CustomGBForce."""
    import jax.numpy as jnp

    found = recognise(force)
    if found is None:
        raise ConfigError(
            "force field: unsupported CustomGBForce: only OpenMM's Amber GB models "
            f"{', '.join(MODELS)} ({', '.join(f for _, f in MODELS.values())}; no cutoff, "
            f"no salt) are read; supported: {supported}"
        )
    model, template, solvent, solute = found
    if solvent <= 0.0 or solute <= 0.0:
        raise ConfigError(
            f"force field: CustomGBForce ({model}) has dielectrics {solute}, {solvent}; "
            "expected both > 0"
        )
    if force.getNumParticles() != n_atoms:
        raise ConfigError(
            f"force field: CustomGBForce has {force.getNumParticles()} particles, "
            f"the System {n_atoms}"
        )
    integral = template.getComputedValueParameters(0)[1]
    born = template.getComputedValueParameters(1)[1]
    polar = template.getEnergyTermParameters(0)[0]
    hct, constants = _born_constants(model, born)
    offset = _number(rf"offset={_NUMBER}", polar, model)
    coulomb = _number(rf"^-0\.5\*{_NUMBER}\*", polar, model)
    ace = 0.0
    if template.getNumEnergyTerms() == 3:  # the ACE term: c (radius+0.14)^2 (radius/B)^6
        surface = template.getEnergyTermParameters(1)[0]
        ace = _number(rf"^{_NUMBER}\*\(radius\+0\.14\)\^2", surface, model)
    neck = "neckScale" in integral
    neck_scale = _number(rf"neckScale={_NUMBER}", integral, model) if neck else 0.0
    neck_cut = _number(rf"neckCut={_NUMBER}", integral, model) if neck else 0.0
    if neck and _number(rf"offset={_NUMBER}", integral, model) != offset:
        raise ConfigError(f"force field: {model} CustomGBForce has two different offsets")

    params = np.asarray([force.getParticleParameters(i) for i in range(n_atoms)], np.float64)
    params = params.reshape(n_atoms, -1)
    charge, offset_radius, scaled_radius = params[:, 0], params[:, 1], params[:, 2]
    bad = np.flatnonzero(~(offset_radius > 0.0))
    if bad.size:
        raise ConfigError(
            f"force field: CustomGBForce ({model}) particle {bad[0]} has offset radius "
            f"{offset_radius[bad[0]]} nm; expected > 0"
        )
    if constants is None:  # GBn2: alpha, beta, gamma per particle
        alpha, beta, gamma = params[:, 3], params[:, 4], params[:, 5]
    else:
        alpha, beta, gamma = (np.full(n_atoms, c) for c in constants)
    m0 = d0 = np.zeros((n_atoms, n_atoms))
    if neck:
        index = params[:, -1].astype(np.int64)
        m0, d0 = _neck_table(force, "getm0", index), _neck_table(force, "getd0", index)

    def array(values):
        return jnp.asarray(np.asarray(values, dtype=np.float64))

    return AmberGB(
        charge=array(charge),
        offset_radius=array(offset_radius),
        scaled_radius=array(scaled_radius),
        alpha=array(alpha),
        beta=array(beta),
        gamma=array(gamma),
        neck_m0=array(m0),
        neck_d0=array(d0),
        model=model,
        offset=offset,
        hct=hct,
        neck_scale=neck_scale,
        neck_cut=neck_cut,
        coulomb_constant=coulomb,
        solute_dielectric=solute,
        solvent_dielectric=solvent,
        ace=ace,
    )
