"""The [reference] settings of ``coarseflow reference`` and the config tables the command reads."""

from __future__ import annotations

from dataclasses import dataclass

from coarseflow.errors import ConfigError


@dataclass(frozen=True)
class ReferenceSettings:
    """Settings of the reference sampler (the [reference] table of a config).

    n_replicas: rungs R of the geometric temperature ladder from the target temperature to
    t_max (K); 1 = plain Langevin dynamics at the target temperature. n_chains: independent
    ladders C. time_step_ps: BAOAB time step (ps; no constraints, hydrogens present, so 1 fs).
    friction_per_ps: Langevin friction (1/ps). n_steps: production steps per walker, after
    burn_in_steps unrecorded ones; both multiples of record_every. record_every: steps between
    recorded frames of the target temperature. exchange_every: steps between swap rounds.
    n_blocks: time blocks for block-average errors. seed: PRNG seed. openmm_check_steps: length
    of the OpenMM cross-check at the target temperature (0 = skip; a multiple of record_every).
    openmm_platform: "CPU" or "Reference". dtype: "float32" or "float64" for the JAX run.
    The defaults are those of the shipped alanine dipeptide reference.
    """

    n_replicas: int = 8
    t_max: float = 1000.0
    n_chains: int = 16
    time_step_ps: float = 0.001
    friction_per_ps: float = 1.0
    n_steps: int = 300_000
    burn_in_steps: int = 10_000
    record_every: int = 25
    exchange_every: int = 50
    n_blocks: int = 10
    seed: int = 0
    openmm_check_steps: int = 400_000
    openmm_platform: str = "CPU"
    dtype: str = "float32"

    def __post_init__(self):
        def fail(key, expected):
            raise ConfigError(f"[reference] {key}: expected {expected}, got {getattr(self, key)!r}")

        from coarseflow import checks

        for key, minimum in (
            ("n_replicas", 1), ("n_chains", 1), ("n_steps", 1), ("burn_in_steps", 0),
            ("record_every", 1), ("exchange_every", 1), ("n_blocks", 2),
            ("openmm_check_steps", 0),
        ):  # fmt: skip
            checks.integer(f"[reference] {key}", getattr(self, key), minimum, 10**12)
        checks.seed("[reference] seed", self.seed)
        for key, high in (("t_max", 1e5), ("time_step_ps", 0.005), ("friction_per_ps", 1e4)):
            checks.number(f"[reference] {key}", getattr(self, key), 0.0, high)
        for key in ("n_steps", "burn_in_steps", "openmm_check_steps"):
            if getattr(self, key) % self.record_every:
                fail(key, f"a multiple of record_every ({self.record_every})")
        if self.n_steps // self.record_every < self.n_blocks:
            fail(
                "n_steps",
                f"at least n_blocks * record_every = "
                f"{self.n_blocks * self.record_every} (one frame per block)",
            )
        if self.openmm_platform not in ("CPU", "Reference"):
            fail("openmm_platform", "'CPU' or 'Reference'")
        if self.dtype not in ("float32", "float64"):
            fail("dtype", "'float32' or 'float64'")


QUICK_SETTINGS = ReferenceSettings(
    n_replicas=2,
    t_max=400.0,
    n_chains=2,
    n_steps=200,
    burn_in_steps=40,
    record_every=10,
    exchange_every=10,
    n_blocks=2,
    openmm_check_steps=200,
)
"""A smoke-test run (seconds): ``reference_main(..., quick=True)``."""


def config_tables(config) -> tuple[dict, dict]:
    """([target] table, [reference] table) of a Config or of a raw config dict."""
    if isinstance(config, dict):
        target, reference = config.get("target"), config.get("reference", {})
    else:
        target, reference = getattr(config, "target", None), getattr(config, "reference", {})
    if not isinstance(target, dict):
        raise ConfigError('config: a [target] table with kind = "molecule" is required')
    return dict(target), dict(reference)


def settings_from_config(config, settings: ReferenceSettings | None = None) -> ReferenceSettings:
    """``settings`` if given, else the config's [reference] table parsed (every key checked)."""
    if settings is not None:
        return settings
    from coarseflow.config import settings_from_table

    return settings_from_table(ReferenceSettings, config_tables(config)[1], "reference")
