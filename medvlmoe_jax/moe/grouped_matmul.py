"""The experts' MLP on expert-major rows, as loops over row blocks (`experts.expert_mlp` per
block) with a hand-written backward pass: the 'cpu_kernel' dispatch.

`jax.lax.ragged_dot` on CPU multiplies every row by every group's weights, and 'blocks'
copies each block's expert weights: on CPU, a loop is faster. Here the rows of expert e are
the segment [start[e], start[e] + size[e]) of the buffer, `size[e]` a multiple of the
smallest block size. The segment is cut into power-of-two blocks: as many of the largest
size as fit, then at most one of each smaller size (the binary digits of the rest), so that
most rows go through large, efficient matmuls while padding stays below K x the smallest
block. The outer loop runs over experts so that each expert's weights are sliced once, and
the backward pass accumulates each expert's weight gradient in a local carry (differentiating
a plain loop would add a full (K, ...) gradient tensor per block).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from medvlmoe_jax.moe.experts import expert_mlp
from medvlmoe_jax.nn import gelu


def block_sizes(num_rows: int, num_experts: int) -> tuple[int, ...]:
  """Descending powers of two: the largest <= 512 and <= rows per expert (matmuls reach full
  speed around 512 rows on CPU); the smallest ~1/16 of the rows per expert, in [8, 64], so
  that padding (< K x the smallest) stays near 6% of the rows or below."""
  per_expert = max(num_rows // num_experts, 1)
  pow2_floor = lambda n: 2 ** int(math.log2(max(n, 1)))
  largest = max(8, min(512, pow2_floor(per_expert)))
  smallest = min(largest, max(8, min(64, pow2_floor(per_expert // 16))))
  return tuple(largest >> i for i in range(int(math.log2(largest // smallest)) + 1))


def _blocks(sizes, start, size):
  """(block size, offset of the first block, number of blocks) for each size, in one
  expert's segment [start, start + size)."""
  out = []
  for i, block in enumerate(sizes):
    rest = size if i == 0 else size % (2 * block)     # rows left for this size and smaller
    out.append((block, start + size - rest, rest // block))
  return out


def _forward(params, x, start, size, sizes, keep_pre):
  out = jnp.zeros_like(x, shape=(x.shape[0], params[2].shape[2]))
  pre = jnp.zeros_like(x, shape=(x.shape[0], params[0].shape[2])) if keep_pre else None

  def expert(e, carry):
    expert_params = [p[e] for p in params]
    for block, first, count in _blocks(sizes, start[e], size[e]):
      def step(i, carry, block=block, first=first):
        out, pre = carry
        row = first + i * block
        y, h = expert_mlp(expert_params, jax.lax.dynamic_slice_in_dim(x, row, block),
                          with_pre=True)
        out = jax.lax.dynamic_update_slice_in_dim(out, y, row, 0)
        if keep_pre:
          pre = jax.lax.dynamic_update_slice_in_dim(pre, h, row, 0)
        return out, pre
      carry = jax.lax.fori_loop(0, count, step, carry)
    return carry
  return jax.lax.fori_loop(0, params[0].shape[0], expert, (out, pre))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def grouped_mlp(params, x: jax.Array, start: jax.Array, size: jax.Array,
                sizes: tuple[int, ...]) -> jax.Array:
  """`expert_mlp` with expert e's weights on the rows of its segment; rows outside every
  segment give zeros. params: stacked (K, ...) `ExpertParams`; x (rows, w); start, size (K,)
  int, size a multiple of sizes[-1], segments inside x; sizes from `block_sizes`."""
  return _forward(params, x, start, size, sizes, keep_pre=False)[0]


def _fwd(params, x, start, size, sizes):
  out, pre = _forward(params, x, start, size, sizes, keep_pre=True)
  return out, (params, x, pre, start, size)


def _bwd(sizes, res, dy):
  params, x, pre, start, size = res
  w1, b1, w2, b2 = params
  f32 = jnp.float32

  def expert(e, carry):
    dx, grads = carry
    w1e, w2e = w1[e], w2[e]
    acc = tuple(jnp.zeros_like(p[e], f32) for p in params)
    for block, first, count in _blocks(sizes, start[e], size[e]):
      def step(i, carry, block=block, first=first):
        dx, (dw1, db1, dw2, db2) = carry
        row = first + i * block
        rows = lambda a: jax.lax.dynamic_slice_in_dim(a, row, block)
        xb, dyb = rows(x), rows(dy)
        h, gelu_vjp = jax.vjp(gelu, rows(pre))
        dpre, = gelu_vjp(dyb @ w2e.T)
        dx = jax.lax.dynamic_update_slice_in_dim(dx, dpre @ w1e.T, row, 0)
        return dx, (dw1 + xb.T.astype(f32) @ dpre.astype(f32), db1 + dpre.sum(0, dtype=f32),
                    dw2 + h.T.astype(f32) @ dyb.astype(f32), db2 + dyb.sum(0, dtype=f32))
      dx, acc = jax.lax.fori_loop(0, count, step, (dx, acc))
    return dx, tuple(g.at[e].set(a) for g, a in zip(grads, acc))

  grads = tuple(jnp.zeros_like(p, f32) for p in params)
  dx, grads = jax.lax.fori_loop(0, w1.shape[0], expert, (jnp.zeros_like(x), grads))
  grads = [g.astype(p.dtype) for g, p in zip(grads, params)]
  return jax.tree.unflatten(jax.tree.structure(params), grads), dx, None, None


grouped_mlp.defvjp(_fwd, _bwd)
