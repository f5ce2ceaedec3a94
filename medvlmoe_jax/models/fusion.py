"""Projections, bidirectional cross-attention and the modality gate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.models.layers import Attention, embedding_table, layer_norm
from medvlmoe_jax.nn import dense

GATE_MODES = ("modality", "feature", "none")


class StreamProjection(nnx.Module):
  """z = X W + pos + type: a linear map into the fusion width with a learned position table
  and a learned modality-type vector, one per stream."""

  def __init__(self, width_in: int, dim: int, max_len: int, *, dtype, rngs: nnx.Rngs):
    self.max_len = max_len
    self.proj = dense(width_in, dim, dtype=dtype, rngs=rngs)
    self.position = embedding_table(max_len, dim, rngs)
    self.modality_type = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    length = x.shape[1]
    if length > self.max_len:
      raise ValueError(f"sequence of length {length} exceeds the position table ({self.max_len})")
    z = self.proj(x)
    return z + (self.position[...][:length] + self.modality_type[...]).astype(z.dtype)


class BidirectionalCrossAttention(nnx.Module):
  """F_v = LN(z_v + MHA(q=z_v, kv=z_t)), F_t = LN(z_t + MHA(q=z_t, kv=z_v)), separate weights.

  Vision queries never attend to text padding; both directions read the previous block's
  outputs.
  """

  def __init__(self, dim: int, heads: int, *, dtype, rngs: nnx.Rngs):
    self.vision_from_text = Attention(dim, heads, dtype=dtype, rngs=rngs,
                                      site="fusion_vision_from_text")
    self.text_from_vision = Attention(dim, heads, dtype=dtype, rngs=rngs,
                                      site="fusion_text_from_vision")
    self.vision_norm = layer_norm(dim, eps=1e-5, dtype=dtype, rngs=rngs)
    self.text_norm = layer_norm(dim, eps=1e-5, dtype=dtype, rngs=rngs)

  def __call__(self, zv, zt, text_mask):
    fv = self.vision_norm(zv + self.vision_from_text(zv, kv=zt, key_mask=text_mask > 0))
    ft = self.text_norm(zt + self.text_from_vision(zt, kv=zv))
    return fv, ft


class ModalityGate(nnx.Module):
  """g = sigmoid(W_g [f_v; f_t]); `modality`: one gate per stream, `feature`: one per channel."""

  def __init__(self, dim: int, mode: str, *, dtype, rngs: nnx.Rngs):
    if mode not in ("modality", "feature"):
      raise ValueError(f"gate mode {mode!r} is not one of {GATE_MODES}")
    self.mode = mode
    self.proj = dense(2 * dim, 2 if mode == "modality" else 2 * dim, dtype=dtype, rngs=rngs)

  def __call__(self, fv: jax.Array, ft: jax.Array) -> tuple[jax.Array, jax.Array]:
    g = jax.nn.sigmoid(self.proj(jnp.concatenate([fv, ft], axis=-1)).astype(jnp.float32))
    if self.mode == "modality":
      gv, gt = g[:, :1], g[:, 1:]
    else:
      gv, gt = jnp.split(g, 2, axis=-1)
    return jnp.concatenate([gv.astype(fv.dtype) * fv, gt.astype(ft.dtype) * ft], axis=-1), g
