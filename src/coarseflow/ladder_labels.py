"""Checkpoint names: a beta in (0, 1] as a fixed-width label (12 decimals), and back."""

from __future__ import annotations

import re

from coarseflow.checks import is_number, show
from coarseflow.errors import ConfigError

_LABEL_RE = re.compile(r"[01]\.\d{12}")


def ladder_label(beta: float) -> str:
    """A fixed-width name for ``beta`` in (0, 1]: ``f"{beta:.12f}"``, e.g. '0.010000000000'.

    Distinct for betas more than 1e-12 apart, and string order is beta order. A beta up to
    1e-12 (the label's resolution) above 1 is 1.
    """
    if not is_number(beta) or not 0.0 < float(beta) <= 1.0 + 1e-12:
        raise ValueError(f"ladder_label: expected beta in (0, 1], got {show(beta)}")
    label = f"{min(float(beta), 1.0):.12f}"
    if float(label) <= 0.0:
        raise ValueError(f"ladder_label: beta {show(beta)} rounds to 0 at 12 decimals")
    return label


def parse_ladder_label(label: str) -> float:
    """Inverse of ``ladder_label`` (up to the 12-decimal rounding)."""
    if not isinstance(label, str) or _LABEL_RE.fullmatch(label) is None:
        raise ConfigError(
            f"ladder label: expected a beta written as 0.dddddddddddd or 1.000000000000, "
            f"got {show(label)}"
        )
    beta = float(label)
    if not 0.0 < beta <= 1.0:
        raise ConfigError(f"ladder label: expected beta in (0, 1], got {label!r}")
    return beta
