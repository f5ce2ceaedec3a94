"""Sending routed tokens to their experts and combining the outputs, on one device.

Each computed (token, choice) assignment gets a row of an expert-major buffer and tokens
move by index: a gather into the rows, a gather of the outputs back, weighted by the routing
weights (GShard's one-hot dispatch/combine einsums cost O(T K C w) instead). A capacity C
serves the first choices of all tokens before any second choice and drops (counts, zeroes)
assignments past C; capacity None is dropless. The implementations (`IMPLS`, config key
`model.moe.dispatch`) differ only in the row layout and how the experts meet their rows:
(K, C, w) slot buffers through one batched einsum ('slots'); or contiguous per-expert
segments, through `jax.lax.ragged_dot` ('ragged_dot'), the CPU kernel `grouped_matmul`
('cpu_kernel'), or padded to whole blocks of B rows that one batched einsum runs, each block
with its expert's weights ('blocks': MegaBlocks' layout in plain XLA ops).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from medvlmoe_jax import platform
from medvlmoe_jax.moe import grouped_matmul
from medvlmoe_jax.moe.experts import ExpertParams, expert_mlp

# (params, x (T, w), expert_index (T, k), weights (T, k), valid (T,), counted (T,) or None)
# -> (y (T, w), dropped). `valid`: tokens that are routed; `counted`: tokens whose share of
# the capacity counts (default all; the model leaves out its batch-padding rows).
Dispatcher = Callable[[ExpertParams, jax.Array, jax.Array, jax.Array, jax.Array,
                       jax.Array | None], tuple[jax.Array, jax.Array]]


def compute_capacity(num_tokens: int, num_experts: int, top_k: int,
                     capacity_factor: float | None) -> int | None:
  """GShard capacity: ceil(top_k * tokens / experts * capacity_factor) slots per expert
  (None, dropless, for capacity_factor None)."""
  if capacity_factor is None:
    return None
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


def capacity_limit(counted: jax.Array | None, num_experts: int, top_k: int,
                   capacity_factor: float | None) -> jax.Array | None:
  """`compute_capacity` for the number of `counted` tokens, at run time (None without a
  capacity or a count): a table lookup, so that it is exactly the static value for the same
  count, and never above the static capacity of all T tokens. Batch padding is left out of
  the count, so that it takes no capacity from the real tokens."""
  if counted is None or capacity_factor is None:
    return None
  table = [compute_capacity(n, num_experts, top_k, capacity_factor)
           for n in range(counted.shape[0] + 1)]
  return jnp.asarray(table, jnp.int32)[jnp.sum(counted)]


def kept_within_capacity(position: jax.Array, valid: jax.Array,
                         capacity: int | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Which assignments (positions from `expert_positions`) fit `capacity` slots per expert,
  (T, k) bool, and the number of valid assignments dropped."""
  kept = valid[:, None] & (position < capacity)
  return kept, jnp.sum(valid[:, None] & ~kept)


def slot_rows(expert_index: jax.Array, position: jax.Array, valid: jax.Array,
              num_experts: int, capacity: int,
              limit: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Row `e * capacity + position` of each assignment in (K * capacity) slot buffers, and the
  dropped count. Dropped and invalid assignments get row K * capacity: out of range, so they
  take no slot and contribute zero. `limit` (<= capacity): the run-time capacity."""
  kept, dropped = kept_within_capacity(position, valid, capacity if limit is None else limit)
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


def dropless_capacities(num_tokens: int, top_k: int, num_experts: int,
                        min_capacity: int = 8) -> list[int]:
  """Slot capacities for dropless slot dispatch, to pick from at run time: from
  max(min_capacity, mean rows per expert) up to `num_tokens` in steps of sqrt(2). Capacity
  `num_tokens` always suffices (an expert is chosen at most once per token), so nothing is
  dropped, and the smallest one that holds the fullest expert computes < sqrt(2) x its rows
  per expert. `min_capacity` keeps the experts' GEMMs from getting too thin to pay."""
  capacities = [min(num_tokens, max(min_capacity, math.ceil(top_k * num_tokens / num_experts)))]
  while capacities[-1] < num_tokens:
    capacities.append(min(num_tokens, math.ceil(capacities[-1] * math.sqrt(2))))
  return capacities


def slots(params: ExpertParams, x, expert_index, weights, valid, capacity: int | None = None,
          *, limit=None, run=expert_mlp, fullest=lambda n: n, num_experts: int | None = None,
          min_capacity: int = 8):
  """(y, dropped) through (K, C, w) slot buffers, which `run(params, buffers)` passes through
  the experts (expert parallelism wraps `expert_mlp` in all_to_all; its params hold only its
  own experts, hence `num_experts`). Dropless: C is the smallest of `dropless_capacities`
  that holds the `fullest` expert, picked at run time by `lax.switch` (a branch per C)."""
  num_experts = num_experts or params.w1.shape[0]
  position, count = expert_positions(expert_index, valid, num_experts)

  def with_capacity(capacity, params, x, expert_index, weights, valid, position):
    rows, dropped = slot_rows(expert_index, position, valid, num_experts, capacity, limit)
    buffers = tokens_to_rows(x, rows, num_experts * capacity).reshape(num_experts, capacity, -1)
    out = run(params, buffers).reshape(num_experts * capacity, -1)
    return rows_to_tokens(out, rows, weights), dropped

  operands = (params, x, expert_index, weights, valid, position)
  if capacity is not None:
    return with_capacity(capacity, *operands)
  capacities = dropless_capacities(*expert_index.shape, num_experts, min_capacity)
  branch = jnp.searchsorted(jnp.asarray(capacities), fullest(jnp.max(count)))
  return jax.lax.switch(branch, [functools.partial(with_capacity, c) for c in capacities],
                        *operands)


def segments(expert_index: jax.Array, valid: jax.Array, num_experts: int, capacity: int | None,
             limit=None, align: int = 1):
  """The kept assignments as contiguous per-expert segments, each padded to a multiple of
  `align` rows: (rank in its segment (T, k), kept (T, k), start (K,), size (K,), dropped).
  Dropless is capacity T: an expert is chosen at most once per token."""
  position, count = expert_positions(expert_index, valid, num_experts)
  capacity = expert_index.shape[0] if capacity is None else capacity
  capacity = capacity if limit is None else limit
  kept, dropped = kept_within_capacity(position, valid, capacity)
  size = (jnp.minimum(count, capacity) + align - 1) // align * align
  return position, kept, jnp.cumsum(size) - size, size, dropped


def segment_rows(expert_index, position, kept, start, num_rows: int) -> jax.Array:
  """Row of each assignment in the segments; row `num_rows` (out of range) if not kept."""
  return jnp.where(kept, start[expert_index] + position, num_rows)


def ragged_dot(params: ExpertParams, x, expert_index, weights, valid, capacity: int | None = None,
               *, limit=None):
  """(y, dropped) through `jax.lax.ragged_dot` on the segments. Its default lowering, on CPU
  and on GPU, multiplies every row by every expert's weights (K x the FLOPs): see
  benchmark/moe.py."""
  num_tokens, k = expert_index.shape
  num_experts = params.w1.shape[0]
  position, kept, start, size, dropped = segments(expert_index, valid, num_experts, capacity,
                                                  limit)
  rows = segment_rows(expert_index, position, kept, start, num_tokens * k)
  row_expert = jnp.searchsorted(jnp.cumsum(size), jnp.arange(num_tokens * k), side="right")
  row_expert = jnp.minimum(row_expert, num_experts - 1)    # rows past the segments: unused
  ys = expert_mlp(params, tokens_to_rows(x, rows, num_tokens * k),
                  dot=lambda a, w: jax.lax.ragged_dot(a, w, size), bias=lambda b: b[row_expert])
  return rows_to_tokens(ys, rows, weights), dropped


def cpu_kernel(params: ExpertParams, x, expert_index, weights, valid,
               capacity: int | None = None, *, limit=None):
  """(y, dropped) through the CPU kernel `grouped_matmul.grouped_mlp`, each segment padded to
  a multiple of its smallest block."""
  num_tokens, k = expert_index.shape
  num_experts = params.w1.shape[0]
  params = ExpertParams(*(p.astype(x.dtype) for p in params))
  sizes = grouped_matmul.block_sizes(num_tokens * k, num_experts)
  position, kept, start, size, dropped = segments(expert_index, valid, num_experts, capacity,
                                                  limit, sizes[-1])
  num_rows = max(num_tokens * k + num_experts * (sizes[-1] - 1), sizes[0])
  rows = segment_rows(expert_index, position, kept, start, num_rows)
  ys = grouped_matmul.grouped_mlp(params, tokens_to_rows(x, rows, num_rows), start, size, sizes)
  return rows_to_tokens(ys, rows, weights), dropped


def block_size(num_rows: int, num_experts: int) -> int:
  """Rows per block B: the largest power of two in [8, 512] with K * B <= num_rows / 4.

  Each block costs a copy of its expert's weights (w h elements, against 2 B w h FLOPs) and
  padding costs < K blocks: B trades the two. K * B <= rows / 4 bounds the padded rows by
  1.25 x the assignments (6144 assignments of 8 experts: B = 128, <= 1.17 x)."""
  block = 8
  while block < 512 and 2 * block * num_experts * 4 <= num_rows:
    block *= 2
  return block


def block_count(num_rows: int, num_experts: int, block: int, capacity: int) -> int:
  """The most blocks that `num_rows` assignments fill, each expert's segment padded to whole
  blocks (a static bound): min(K, rows) experts each start a block with one row and the other
  rows fill whole blocks, so <= min(K, rows) + (rows - min(K, rows)) // B (<= ceil(rows / B)
  + K - 1); and <= K ceil(capacity / B)."""
  started = min(num_experts, num_rows)
  return max(1, min(started + (num_rows - started) // block,
                    num_experts * -(-capacity // block)))


def block_experts(size: jax.Array, block: int, num_blocks: int) -> jax.Array:
  """The expert of each block of the padded segments `size` (K,); blocks past the last
  segment (which no token reads) get the last expert."""
  ends = jnp.cumsum(size) // block
  return jnp.minimum(jnp.searchsorted(ends, jnp.arange(num_blocks), side="right"),
                     size.shape[0] - 1)


def blocks(params: ExpertParams, x, expert_index, weights, valid, capacity: int | None = None,
           *, limit=None):
  """(y, dropped) with each expert's segment padded to whole blocks of B rows and the blocks,
  (num_blocks, B, w), through one batched einsum with each block's expert weights gathered
  (MegaBlocks' layout in plain XLA ops): the kept rows plus < K B rows of padding on any
  backend, all in parallel, and XLA counts its FLOPs as they are. A batched dot takes one
  weight matrix per batch element, so the gather copies (num_blocks, w, h) weights; measured
  on CPU at token granularity, a loop over blocks slicing the weights in place has no copy
  and a ~1.5x faster forward pass (training: the same), but runs the blocks one after
  another (on a GPU, kernel launches per block) and cost analysis counts one block (the
  'cpu_kernel' is that loop, tuned for CPU); unrolled chunks of blocks kept every chunk's
  copy. The backward pass is autodiff: batched einsums, and the per-block weight gradients
  summed into their experts (the gather's transpose)."""
  num_tokens, k = expert_index.shape
  num_experts = params.w1.shape[0]
  block = block_size(num_tokens * k, num_experts)
  num_blocks = block_count(num_tokens * k, num_experts, block,
                           num_tokens if capacity is None else capacity)
  position, kept, start, size, dropped = segments(expert_index, valid, num_experts, capacity,
                                                  limit, block)
  rows = segment_rows(expert_index, position, kept, start, num_blocks * block)
  xs = tokens_to_rows(x, rows, num_blocks * block).reshape(num_blocks, block, -1)
  index = block_experts(size, block, num_blocks)
  ys = expert_mlp(ExpertParams(*(p.astype(x.dtype)[index] for p in params)), xs)
  return rows_to_tokens(ys.reshape(num_blocks * block, -1), rows, weights), dropped


IMPLS = {"slots": slots, "blocks": blocks, "ragged_dot": ragged_dot, "cpu_kernel": cpu_kernel}

def dispatch(params: ExpertParams, x, expert_index, weights, valid, capacity: int | None = None,
             impl: str | None = None, limit=None):
  """(y, dropped) on one device: at most `capacity` assignments per expert (None: dropless;
  `limit`: a run-time capacity <= capacity), through `IMPLS[impl]` (None or 'auto': the
  compile target's, `platform.moe_dispatch`)."""
  if impl in (None, "auto"):
    impl = platform.moe_dispatch(expert_index.size, params.w1.shape[0], capacity is None)
  return IMPLS[impl](params, x, expert_index, weights, valid, capacity, limit=limit)

