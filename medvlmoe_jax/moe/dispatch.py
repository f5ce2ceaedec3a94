"""Sending routed tokens to experts and combining their outputs.

Two dispatchers over the same stacked expert weights `(K, ...)`:
- `dispatch_dropless`: no token is ever dropped.
- `dispatch_with_capacity`: a fixed number of slots per expert; the first choices of all
  tokens are served before any second choice, and assignments past the capacity are dropped
  (counted, and contribute zero).
Both give each computed (token, choice) assignment a row of an expert-major buffer and move
tokens by index: a gather into the rows, a gather of the outputs back, weighted by the
routing weights. (GShard's one-hot dispatch/combine einsums cost O(T K C w) instead.) The
rows are laid out as (K, C) slot buffers for a batched einsum ('slots'), or as contiguous
per-expert segments for grouped matmuls ('ragged' on accelerators, 'blocked' on CPU).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from medvlmoe_jax.nn import gelu
from medvlmoe_jax.moe import grouped_matmul


class ExpertParams(NamedTuple):
  """Stacked weights of K two-layer experts: Linear(w->h) -> GELU -> Linear(h->w)."""
  w1: jax.Array  # (K, w, h)
  b1: jax.Array  # (K, h)
  w2: jax.Array  # (K, h, w)
  b2: jax.Array  # (K, w)


def compute_capacity(num_tokens: int, num_experts: int, top_k: int,
                     capacity_factor: float) -> int:
  """GShard capacity: ceil(top_k * tokens / experts * capacity_factor) slots per expert."""
  return max(1, math.ceil(top_k * num_tokens / num_experts * capacity_factor))


def expert_positions(expert_index: jax.Array, valid: jax.Array,
                     num_experts: int) -> tuple[jax.Array, jax.Array]:
  """Rank of each assignment among its expert's valid assignments, and their number.

  Priority: choice 0 of every token (in token order), then choice 1, ... so that a capacity
  serves first choices before any second choice. Invalid tokens take no rank (their
  position is meaningless). Returns (position (T, k) int32, count (K,) int32).
  """
  num_tokens, k = expert_index.shape
  flat = expert_index.T.reshape(-1)                        # choice-major order
  onehot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32) * jnp.tile(valid, k)[:, None]
  ranks = jnp.cumsum(onehot, axis=0)                       # (k*T, K)
  position = jnp.take_along_axis(ranks, flat[:, None], axis=1)[:, 0] - 1
  return position.reshape(k, num_tokens).T.astype(jnp.int32), ranks[-1]


def kept_within_capacity(position: jax.Array, valid: jax.Array,
                         capacity: int) -> tuple[jax.Array, jax.Array]:
  """Which assignments (positions from `expert_positions`) fit `capacity` slots per expert,
  (T, k) bool, and the number of valid assignments dropped."""
  kept = valid[:, None] & (position < capacity)
  return kept, jnp.sum(valid[:, None] & ~kept)


def slot_rows(expert_index: jax.Array, position: jax.Array, valid: jax.Array,
              num_experts: int, capacity: int) -> tuple[jax.Array, jax.Array]:
  """Row `e * capacity + position` of each assignment in (K * capacity) slot buffers, and the
  dropped count. Dropped and invalid assignments get row K * capacity: out of range, so they
  take no slot and contribute zero."""
  kept, dropped = kept_within_capacity(position, valid, capacity)
  return jnp.where(kept, expert_index * capacity + position, num_experts * capacity), dropped


def tokens_to_rows(x: jax.Array, rows: jax.Array, num_rows: int) -> jax.Array:
  """(num_rows, w) buffer holding token t at rows[t, j] for every choice j, zeros elsewhere;
  rows out of range are skipped. A gather (with a small integer scatter to invert `rows`)."""
  num_tokens, k = rows.shape
  token = jnp.repeat(jnp.arange(num_tokens, dtype=jnp.int32), k)
  source = jnp.full((num_rows,), num_tokens, jnp.int32).at[rows.reshape(-1)].set(token, mode="drop")
  return x.at[source].get(mode="fill", fill_value=0)


def rows_to_tokens(out: jax.Array, rows: jax.Array, weights: jax.Array) -> jax.Array:
  """y[t] = sum_j weights[t, j] * out[rows[t, j]]; rows out of range contribute zero."""
  picked = out.at[rows].get(mode="fill", fill_value=0)     # (T, k, w)
  return jnp.sum(picked * weights.astype(out.dtype)[..., None], axis=1)


def expert_forward(params: ExpertParams, x: jax.Array) -> jax.Array:
  """All experts on their own slot buffers: x (K, C, w) -> (K, C, w)."""
  dtype = x.dtype
  h = jnp.einsum("kcw,kwh->kch", x, params.w1.astype(dtype)) + params.b1.astype(dtype)[:, None]
  h = gelu(h)
  return jnp.einsum("kch,khw->kcw", h, params.w2.astype(dtype)) + params.b2.astype(dtype)[:, None]


def _grouped(params: ExpertParams, x: jax.Array, expert_index: jax.Array, weights: jax.Array,
             kept: jax.Array, position: jax.Array, count: jax.Array, impl: str) -> jax.Array:
  """The kept assignments through their experts, rows grouped by expert (expert e's rows are
  a contiguous segment; 'blocked' pads each segment to a multiple of its smallest block).

  impl: 'ragged' (`jax.lax.ragged_dot`; on CPU it multiplies every row by every group's
  weights) or 'blocked' (`grouped_matmul.grouped_mlp`, loops over expert-pure row blocks).
  """
  num_tokens, k = expert_index.shape
  num_experts = params.w1.shape[0]
  params = ExpertParams(*(p.astype(x.dtype) for p in params))
  if impl == "blocked":
    sizes = grouped_matmul.block_sizes(num_tokens * k, num_experts)
    size = (count + sizes[-1] - 1) // sizes[-1] * sizes[-1]
    num_rows = max(num_tokens * k + num_experts * (sizes[-1] - 1), sizes[0])
  else:
    size, num_rows = count, num_tokens * k
  start = jnp.cumsum(size) - size
  rows = jnp.where(kept, start[expert_index] + position, num_rows)
  xs = tokens_to_rows(x, rows, num_rows)
  if impl == "blocked":
    ys = grouped_matmul.grouped_mlp(params, xs, start, size, sizes)
  else:
    row_expert = jnp.searchsorted(jnp.cumsum(count), jnp.arange(num_rows), side="right")
    row_expert = jnp.minimum(row_expert, num_experts - 1)  # rows past the groups: unused
    h = gelu(jax.lax.ragged_dot(xs, params.w1, count) + params.b1[row_expert])
    ys = jax.lax.ragged_dot(h, params.w2, count) + params.b2[row_expert]
  return rows_to_tokens(ys, rows, weights)


# On CPU, up to this many rows per expert (top_k * tokens / K) the experts' time is spent
# reading weights: slicing one expert's weights costs as much as its matmuls, and the batched
# einsum over (K, C, w) slot buffers, which reads them in place, is the fastest layout.
SMALL_ROWS_PER_EXPERT = 32


def _default_impl(expert_index: jax.Array, num_experts: int, accelerator: str) -> str:
  if jax.default_backend() != "cpu":
    return accelerator
  rows_per_expert = expert_index.size / num_experts
  return "slots" if rows_per_expert <= SMALL_ROWS_PER_EXPERT else "blocked"


def dispatch_with_capacity(params: ExpertParams, x: jax.Array, expert_index: jax.Array,
                           weights: jax.Array, valid: jax.Array, capacity: int,
                           impl: str | None = None) -> tuple[jax.Array, jax.Array]:
  """At most `capacity` assignments per expert. Returns (y, dropped count).

  impl: 'slots' ((K, capacity, w) slot buffers through a batched einsum: the default on
  accelerators and for small inputs on CPU) or 'blocked' (the default on CPU otherwise: the
  kept assignments go through the dropless CPU kernel, which computes no empty slot).
  """
  num_experts = params.w1.shape[0]
  impl = impl or _default_impl(expert_index, num_experts, accelerator="slots")
  position, count = expert_positions(expert_index, valid, num_experts)
  if impl == "blocked":
    kept, dropped = kept_within_capacity(position, valid, capacity)
    y = _grouped(params, x, expert_index, weights, kept, position, jnp.minimum(count, capacity),
                 "blocked")
    return y, dropped
  return _slots(params, x, expert_index, weights, valid, position, capacity)


def _slots(params, x, expert_index, weights, valid, position, capacity):
  """(y, dropped) through (K, capacity, w) slot buffers."""
  num_experts = params.w1.shape[0]
  rows, dropped = slot_rows(expert_index, position, valid, num_experts, capacity)
  slots = tokens_to_rows(x, rows, num_experts * capacity).reshape(num_experts, capacity, -1)
  out = expert_forward(params, slots).reshape(num_experts * capacity, -1)
  return rows_to_tokens(out, rows, weights), dropped


def dropless_capacities(num_tokens: int, top_k: int, num_experts: int) -> list[int]:
  """Slot capacities for dropless slot dispatch, to pick from at run time: from
  max(8, mean rows per expert) up to `num_tokens` in steps of sqrt(2). Capacity `num_tokens`
  always suffices (an expert is chosen at most once per token), so nothing is dropped, and
  the smallest one that holds the fullest expert computes < sqrt(2) x its rows per expert."""
  capacities = [min(num_tokens, max(8, math.ceil(top_k * num_tokens / num_experts)))]
  while capacities[-1] < num_tokens:
    capacities.append(min(num_tokens, math.ceil(capacities[-1] * math.sqrt(2))))
  return capacities


def _dropless_slots(params: ExpertParams, x: jax.Array, expert_index: jax.Array,
                    weights: jax.Array, valid: jax.Array) -> jax.Array:
  """Slot dispatch with the smallest of `dropless_capacities` that holds the fullest expert,
  picked at run time with `lax.switch` (one compiled branch per capacity)."""
  num_tokens, k = expert_index.shape
  num_experts = params.w1.shape[0]
  capacities = dropless_capacities(num_tokens, k, num_experts)
  position, count = expert_positions(expert_index, valid, num_experts)
  branch = jnp.searchsorted(jnp.asarray(capacities), jnp.max(count))
  y, _ = jax.lax.switch(branch, [functools.partial(_slots, capacity=c) for c in capacities],
                        params, x, expert_index, weights, valid, position)
  return y


def dispatch_dropless(params: ExpertParams, x: jax.Array, expert_index: jax.Array,
                      weights: jax.Array, valid: jax.Array, impl: str | None = None) -> jax.Array:
  """Every valid assignment is computed.

  impl: 'ragged' (the default on accelerators), 'blocked' (see `_grouped`; the default on
  CPU) or 'slots' (see `_dropless_slots`; the default on CPU for small inputs, see
  `SMALL_ROWS_PER_EXPERT`).
  """
  num_experts = params.w1.shape[0]
  impl = impl or _default_impl(expert_index, num_experts, accelerator="ragged")
  if impl == "slots":
    return _dropless_slots(params, x, expert_index, weights, valid)
  position, count = expert_positions(expert_index, valid, num_experts)
  kept = jnp.broadcast_to(valid[:, None], expert_index.shape)
  return _grouped(params, x, expert_index, weights, kept, position, count, impl)
