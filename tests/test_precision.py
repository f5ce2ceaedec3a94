"""Parity tests run with true float32 matmuls wherever they run (conftest.py's fixture)."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _dot_precision() -> str:
  x = jnp.ones((4, 4), jnp.float32)
  hlo = jax.jit(jnp.dot).lower(x, x).as_text()
  return hlo.split("precision = [", 1)[1].split(",", 1)[0]


@pytest.mark.float32_parity
def test_marked_tests_lower_float32_matmuls_at_highest_precision():
  assert _dot_precision() == "HIGHEST"


def test_other_tests_keep_the_default_precision():
  assert _dot_precision() == "DEFAULT"


def test_modules_comparing_with_torch_are_marked():
  """A module that checks our float32 outputs against the PyTorch reference must ask for
  float32 matmuls: on A100 / H100, TF32 would break its ~1e-5 tolerances."""
  unmarked = [os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "**", "*.py"),
                                                          recursive=True)
              if "import torch" in (text := open(p).read()) and "float32_parity" not in text
              and os.path.basename(p).startswith("test_")]
  assert not unmarked, f"compare with torch but lack pytest.mark.float32_parity: {unmarked}"
