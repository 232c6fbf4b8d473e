"""Tests run in float64 so that numbers can be compared with exact references tightly."""

import os

import jax

jax.config.update("jax_enable_x64", True)
# the CLI keeps compiled programs in ~/.cache unless told otherwise: not from the tests
os.environ.setdefault("COARSEFLOW_JAX_CACHE", "")
