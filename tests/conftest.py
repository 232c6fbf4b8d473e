"""Tests run in float64 so that numbers can be compared with exact references tightly."""

import jax

jax.config.update("jax_enable_x64", True)
