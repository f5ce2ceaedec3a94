"""Interleaved timing: every candidate runs once per round, rounds repeat, medians compared."""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 7,
                     warmup: int = 2) -> dict[str, dict]:
  """{name: {median_s, min_s, compile_s}}: compile (first call) separately, then `rounds`
  rounds in which each function runs once, so drifts in machine load hit all alike."""
  compile_s = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s[name] = time.perf_counter() - t0
    for _ in range(warmup - 1):
      jax.block_until_ready(fn())
  samples: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      samples[name].append(time.perf_counter() - t0)
  return {name: {"median_s": float(np.median(s)), "min_s": float(np.min(s)),
                 "compile_s": compile_s[name]} for name, s in samples.items()}
