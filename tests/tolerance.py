"""Tolerances of float32 comparisons, from what float32 allows, not from one CPU's result.

Two float32 computations of the same value that differ in their order of summation (another
XLA kernel, another vector width: AVX2 or AVX-512) differ by about eps * sqrt(n) * |terms|
for a reduction of n terms (random-walk rounding), with the terms' magnitude bounded here by
the largest magnitude of the result; `FACTOR` covers the chains of reductions a forward and
backward pass stack up.
"""

import numpy as np

EPS = float(np.finfo(np.float32).eps)
FACTOR = 4.0


def float32_atol(reference, reduction: int, factor: float = FACTOR) -> float:
  """Absolute tolerance for values of `reference`'s magnitude out of reductions of
  `reduction` terms."""
  scale = max(float(np.max(np.abs(np.asarray(reference, np.float64)))), 1.0)
  return factor * EPS * float(np.sqrt(reduction)) * scale
