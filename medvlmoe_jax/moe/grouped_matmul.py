"""y[j] = x[j] @ w[group[j]] over row blocks, with a backward pass that accumulates each
block's weight gradient in place.

This is the CPU path of dropless dispatch: `jax.lax.ragged_dot` on CPU multiplies every row
by every group's weights, and differentiating a plain loop over blocks adds a full (K, ...)
weight-gradient tensor per block. Here the backward loop updates only the block's own
expert slice (`.at[e].add` on the loop carry, done in place by XLA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def block_matmul(x: jax.Array, w: jax.Array, group: jax.Array, used: jax.Array) -> jax.Array:
  """x (nb, b, m), w (K, m, n), group (nb,) int, used (nb,) bool -> (nb, b, n); unused blocks
  give zeros and cost nothing."""
  return _forward(x, w, group, used)


def _forward(x, w, group, used):
  def one(args):
    xb, g, u = args
    return jax.lax.cond(u, lambda: xb @ w[g], lambda: jnp.zeros((xb.shape[0], w.shape[2]), xb.dtype))
  return jax.lax.map(one, (x, group, used))


def _fwd(x, w, group, used):
  return _forward(x, w, group, used), (x, w, group, used)


def _bwd(res, dy):
  x, w, group, used = res

  def dx_one(args):
    dyb, g, u = args
    return jax.lax.cond(u, lambda: dyb @ w[g].T, lambda: jnp.zeros((dyb.shape[0], w.shape[1]), dyb.dtype))
  dx = jax.lax.map(dx_one, (dy, group, used))

  def dw_step(j, dw):
    contrib = x[j].T.astype(jnp.float32) @ dy[j].astype(jnp.float32)
    return jax.lax.cond(used[j], lambda: dw.at[group[j]].add(contrib), lambda: dw)
  dw = jax.lax.fori_loop(0, x.shape[0], dw_step, jnp.zeros(w.shape, jnp.float32))
  return dx, dw.astype(w.dtype), None, None


block_matmul.defvjp(_fwd, _bwd)
