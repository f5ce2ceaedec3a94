"""The experts: K two-layer MLPs with stacked weights, and the one function that runs them."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from medvlmoe_jax.nn import gelu


class ExpertParams(NamedTuple):
  """Stacked weights of K experts, Linear(w->h) -> GELU -> Linear(h->w); the leading K axis
  is what expert parallelism shards."""
  w1: jax.Array  # (K, w, h)
  b1: jax.Array  # (K, h)
  w2: jax.Array  # (K, h, w)
  b2: jax.Array  # (K, w)


def expert_mlp(params, x: jax.Array, *, dot=functools.partial(jnp.einsum, "...cw,...wh->...ch"),
               bias=lambda b: b[..., None, :], with_pre: bool = False):
  """gelu(x w1 + b1) w2 + b2 in x's dtype, for every dispatch path: stacked weights on slot
  buffers x (..., K, C, w) (expert parallelism adds a leading sources axis) or, gathered per
  block, on blocks (num_blocks, B, w); one expert's weights on rows (C, w); or grouped rows
  with their own `dot` (`ragged_dot`) and per-row `bias`. with_pre: also return x w1 + b1,
  which the CPU kernel's backward reuses."""
  w1, b1, w2, b2 = (p.astype(x.dtype) for p in params)
  pre = dot(x, w1) + bias(b1)
  y = dot(gelu(pre), w2) + bias(b2)
  return (y, pre) if with_pre else y
