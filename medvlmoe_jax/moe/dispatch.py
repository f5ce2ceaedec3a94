"""Sending routed tokens to experts and combining their outputs.

Two dispatchers over the same stacked expert weights `(K, ...)`:
- `dispatch_dropless`: sort the (token, expert) assignments by expert and run a grouped
  matmul (`jax.lax.ragged_dot`); no token is ever dropped and no FLOP is spent on padding.
- `dispatch_with_capacity`: GShard one-hot dispatch/combine tensors with a fixed number of
  slots per expert; the first choices of all tokens are served before any second choice, and
  assignments past the capacity are dropped (counted, and contribute zero).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from medvlmoe_jax.models.layers import gelu
from medvlmoe_jax.moe.grouped_matmul import block_matmul


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


def capacity_positions(expert_index: jax.Array, valid: jax.Array, num_experts: int,
                       capacity: int) -> tuple[jax.Array, jax.Array]:
  """Slot of each assignment in its expert's buffer, and whether it fits.

  Priority: choice 0 of every token (in token order), then choice 1, ... Invalid tokens
  take no slot. Returns (position (T, k) int32, kept (T, k) bool).
  """
  num_tokens, k = expert_index.shape
  flat = expert_index.T.reshape(-1)                        # choice-major order
  flat_valid = jnp.tile(valid, k)
  onehot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32) * flat_valid[:, None]
  position = (jnp.cumsum(onehot, axis=0) - 1)              # (k*T, K)
  position = jnp.take_along_axis(position, flat[:, None], axis=1)[:, 0]
  kept = flat_valid & (position < capacity)
  return position.reshape(k, num_tokens).T.astype(jnp.int32), kept.reshape(k, num_tokens).T


def expert_forward(params: ExpertParams, x: jax.Array) -> jax.Array:
  """All experts on their own slot buffers: x (K, C, w) -> (K, C, w)."""
  dtype = x.dtype
  h = jnp.einsum("kcw,kwh->kch", x, params.w1.astype(dtype)) + params.b1.astype(dtype)[:, None]
  h = gelu(h)
  return jnp.einsum("kch,khw->kcw", h, params.w2.astype(dtype)) + params.b2.astype(dtype)[:, None]


def slot_tensors(expert_index: jax.Array, weights: jax.Array, valid: jax.Array,
                 num_experts: int, capacity: int):
  """GShard one-hot tensors: dispatch (T, K, C) in {0, 1}, combine (T, K, C) with the routing
  weights, and the number of valid assignments dropped for lack of a slot."""
  position, kept = capacity_positions(expert_index, valid, num_experts, capacity)
  expert_onehot = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.float32)
  slot_onehot = jax.nn.one_hot(jnp.where(kept, position, capacity), capacity, dtype=jnp.float32)
  dispatch = jnp.einsum("tke,tkc->tec", expert_onehot, slot_onehot)
  combine = jnp.einsum("tke,tkc,tk->tec", expert_onehot, slot_onehot, weights.astype(jnp.float32))
  return dispatch, combine, jnp.sum(valid[:, None] & ~kept)


def dispatch_with_capacity(params: ExpertParams, x: jax.Array, expert_index: jax.Array,
                           weights: jax.Array, valid: jax.Array,
                           capacity: int) -> tuple[jax.Array, jax.Array]:
  """Einsum dispatch/combine with `capacity` slots per expert. Returns (y, dropped count)."""
  num_experts = params.w1.shape[0]
  dispatch, combine, dropped = slot_tensors(expert_index, weights, valid, num_experts, capacity)
  expert_in = jnp.einsum("tec,tw->ecw", dispatch.astype(x.dtype), x)
  expert_out = expert_forward(params, expert_in)
  y = jnp.einsum("tec,ecw->tw", combine.astype(x.dtype), expert_out)
  return y, dropped


def _sort_assignments(expert_index, valid, num_experts):
  """Flat (token, choice) assignments sorted by expert; invalid ones last (key K)."""
  num_tokens, k = expert_index.shape
  flat_expert = jnp.where(jnp.repeat(valid, k), expert_index.reshape(-1), num_experts)
  order = jnp.argsort(flat_expert, stable=True)
  group_sizes = jnp.bincount(flat_expert, length=num_experts + 1)[:num_experts].astype(jnp.int32)
  token = jnp.repeat(jnp.arange(num_tokens), k)[order]
  return order, flat_expert[order], token, group_sizes


def _grouped_mlp_ragged(params: ExpertParams, xs, sorted_expert, group_sizes):
  """Grouped matmuls with `jax.lax.ragged_dot` (fast on GPU/TPU; slow on CPU)."""
  num_experts = params.w1.shape[0]
  dtype = xs.dtype
  bias_row = jnp.minimum(sorted_expert, num_experts - 1)
  h = jax.lax.ragged_dot(xs, params.w1.astype(dtype), group_sizes)
  h = gelu(h + params.b1.astype(dtype)[bias_row])
  return jax.lax.ragged_dot(h, params.w2.astype(dtype), group_sizes) + params.b2.astype(dtype)[bias_row]


def _grouped_mlp_blocked(params: ExpertParams, xs, sorted_expert, group_sizes):
  """Grouped matmuls as a loop over fixed-size row blocks, each belonging to one expert.

  Each expert's rows are padded to a multiple of the block size; blocks past the last
  expert's rows are skipped. Costs at most K partial blocks over the ideal FLOPs.
  """
  num_rows, width = xs.shape
  num_experts = params.w1.shape[0]
  block = int(max(8, min(128, 2 ** math.ceil(math.log2(max(num_rows / num_experts, 1))))))
  padded_sizes = (group_sizes + block - 1) // block * block
  padded_end = jnp.cumsum(padded_sizes)
  group_start = jnp.cumsum(group_sizes) - group_sizes
  in_group = sorted_expert < num_experts
  expert = jnp.minimum(sorted_expert, num_experts - 1)
  rank = jnp.arange(num_rows) - group_start[expert]
  capacity_rows = (num_rows + block - 1) // block * block + num_experts * block
  dest = jnp.where(in_group, padded_end[expert] - padded_sizes[expert] + rank, capacity_rows)
  buffer = jnp.zeros((capacity_rows, width), xs.dtype).at[dest].set(xs, mode="drop")
  num_blocks = capacity_rows // block
  block_expert = jnp.minimum(
      jnp.searchsorted(padded_end, jnp.arange(num_blocks) * block, side="right"), num_experts - 1)
  used = jnp.arange(num_blocks) * block < padded_end[-1]
  dtype = xs.dtype
  blocks = buffer.reshape(num_blocks, block, width)
  h = block_matmul(blocks, params.w1.astype(dtype), block_expert, used)
  h = gelu(h + params.b1.astype(dtype)[block_expert][:, None])
  out = block_matmul(h, params.w2.astype(dtype), block_expert, used)
  out = out + params.b2.astype(dtype)[block_expert][:, None]
  return out.reshape(capacity_rows, width).at[dest].get(mode="fill", fill_value=0)


def dispatch_dropless(params: ExpertParams, x: jax.Array, expert_index: jax.Array,
                      weights: jax.Array, valid: jax.Array, impl: str | None = None) -> jax.Array:
  """Every valid assignment is computed: sort by expert, grouped matmuls, scatter-add back.

  `impl`: 'ragged' (`jax.lax.ragged_dot`, the default on accelerators) or 'blocked' (a loop
  over expert-pure row blocks, the default on CPU, where ragged_dot computes every group
  densely).
  """
  num_experts = params.w1.shape[0]
  impl = impl or ("blocked" if jax.default_backend() == "cpu" else "ragged")
  order, sorted_expert, sorted_token, group_sizes = _sort_assignments(expert_index, valid, num_experts)
  xs = x[sorted_token]
  grouped = {"ragged": _grouped_mlp_ragged, "blocked": _grouped_mlp_blocked}[impl]
  ys = grouped(params, xs, sorted_expert, group_sizes)
  w = jnp.where(sorted_expert < num_experts, weights.reshape(-1)[order], 0).astype(x.dtype)
  return jnp.zeros_like(x).at[sorted_token].add(ys * w[:, None])
