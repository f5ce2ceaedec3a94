"""Building blocks shared by the CLIP vision stream, the BioGPT text stream and the fusion.

Attribute names follow Hugging Face (`q_proj`, `out_proj`, `fc1`, ...) so that weight
conversion is a renaming, not a reinterpretation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax import platform
from medvlmoe_jax.nn import INIT, dense


def layer_norm(width: int, *, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Flax computes the statistics in float32 even when `dtype` is bfloat16.
  return nnx.LayerNorm(width, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def embedding_table(rows: int, width: int, rngs: nnx.Rngs) -> nnx.Param:
  return nnx.Param(INIT(rngs.params(), (rows, width), jnp.float32))


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array,
                   mask: jax.Array | None) -> jax.Array:
  """softmax(q k^T) v on (B, heads, L, head_dim) arrays, logits and softmax in float32.

  `mask` is boolean, broadcastable to (B, heads, Lq, Lk), True where attention is allowed.
  """
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", probs, v)


def blocked_attention(q, k, v, mask, chunk_bytes: int | None = None):
  """`attention_core` over batch chunks whose scores fit in `chunk_bytes` (a `lax.map`);
  the chunk size is the target's (`platform.attention_chunk_bytes`: CPUs only)."""
  batch, heads, q_len, _ = q.shape
  if chunk_bytes is None:
    chunk_bytes = platform.attention_chunk_bytes()
  per_example = 4 * heads * q_len * k.shape[2]
  chunk = batch if chunk_bytes is None else max(1, min(batch, chunk_bytes // per_example))
  while batch % chunk:
    chunk -= 1
  if chunk == batch:
    return attention_core(q, k, v, mask)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (batch, *mask.shape[1:]))
  split = lambda t: None if t is None else t.reshape(batch // chunk, chunk, *t.shape[1:])
  out = jax.lax.map(lambda a: attention_core(*a), (split(q), split(k), split(v), split(mask)))
  return out.reshape(q.shape[:3] + (v.shape[-1],))


def full_mask(q_len: int, k_len: int, mask=None, key_mask=None, causal: bool = False):
  """One boolean mask (broadcastable to (B, heads, Lq, Lk)) from a general `mask`, a key
  padding mask (B, Lk) and causality; None if nothing is masked."""
  parts = [] if mask is None else [mask]
  if key_mask is not None:
    parts.append(key_mask[:, None, None, :])
  if causal:
    parts.append(jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None, None])
  if not parts:
    return None
  out = parts[0]
  for part in parts[1:]:
    out = out & part
  return out


def _pad_to_even(x: jax.Array, axis: int) -> jax.Array:
  extra = x.shape[axis] % 2
  return x if not extra else jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])


def fused_attention(q, k, v, mask=None, key_mask=None, causal: bool = False,
                    implementation: str = "cudnn"):
  """`jax.nn.dot_product_attention` as cuDNN's fused kernel takes it, on (B, L, heads,
  head_dim) arrays, q already scaled. JAX 0.10's cuDNN attention refuses odd sequence
  lengths under the gradient (it treats every call as biased), and ViT-L/14 has 257 tokens:
  both lengths are padded to even, the padded keys masked by `key_value_seq_lengths` and the
  padded query rows sliced off. Key padding passes as lengths too (no bias tensor): a key
  mask must be a prefix of each row (right padding, as `data.tokenizers` pads); a row with
  no key attends to its first (cuDNN has no empty row). A general `mask` goes as cuDNN's
  bias. With `implementation='xla'` the same padded call runs anywhere (the CPU tests)."""
  batch, q_len, k_len = q.shape[0], q.shape[1], k.shape[1]
  qp, kp, vp = _pad_to_even(q, 1), _pad_to_even(k, 1), _pad_to_even(v, 1)
  lengths = {}
  if key_mask is not None or kp.shape[1] != k_len:
    kv_len = (jnp.full((batch,), k_len, jnp.int32) if key_mask is None else
              jnp.maximum(jnp.sum(key_mask.astype(jnp.int32), axis=-1), 1))
    lengths = dict(query_seq_lengths=jnp.full((batch,), q_len, jnp.int32),
                   key_value_seq_lengths=kv_len)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (batch, 1, q_len, k_len))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, qp.shape[1] - q_len), (0, kp.shape[1] - k_len)),
                   constant_values=True)   # padded keys are cut by the lengths
  out = jax.nn.dot_product_attention(qp, kp, vp, mask=mask, scale=1.0, is_causal=causal,
                                     implementation=implementation, **lengths)
  return out[:, :q_len]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
           key_mask: jax.Array | None = None, causal: bool = False,
           site: str = "attention") -> jax.Array:
  """softmax(q k^T) v on (B, L, heads, head_dim) arrays, q already scaled; masks as in
  `Attention`. The implementation is the compile target's (`platform.attention`); every
  one keeps logits and softmax in float32, and a query row with every key masked attends
  uniformly (cuDNN: to its first key, `fused_attention`). `site` names the call in the HLO
  (`jax.named_scope`) and in a fallback's log line."""
  target = platform.current()
  impl, reason = platform.attention(q.dtype, q.shape[-1], target)
  with jax.named_scope(site):
    if impl == "cudnn":
      return fused_attention(q, k, v, mask, key_mask, causal)
    if target.platform == "gpu":
      platform.log_fallback(site, impl, reason)
    mask = full_mask(q.shape[1], k.shape[1], mask, key_mask, causal)
    if impl == "blocked":
      heads_first = lambda t: t.transpose(0, 2, 1, 3)
      out = blocked_attention(heads_first(q), heads_first(k), heads_first(v), mask)
      return heads_first(out)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation=impl)


class Attention(nnx.Module):
  """Multi-head attention with separate q/k/v/out projections (HF layout).

  Masks, each True where attention is allowed: `key_mask` (B, Lk), the keys' padding (a
  prefix of each row: right padding); `causal`; `mask`, any boolean mask broadcastable to
  (B, heads, Lq, Lk). The first two reach cuDNN as sequence lengths, a `mask` as a bias.
  Logits and softmax run in float32 whatever the compute dtype. A query row with every key
  masked attends uniformly, as HF's additive-minimum masks do. `site` names the attention
  in the compiled HLO (the deviceless compile counts fused calls per site).
  """

  def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs, site: str = "attention"):
    if width % heads:
      raise ValueError(f"width {width} is not divisible by heads {heads}")
    self.heads = heads
    self.site = site
    self.dtype = dtype
    self.q_proj = dense(width, width, dtype=dtype, rngs=rngs)
    self.k_proj = dense(width, width, dtype=dtype, rngs=rngs)
    self.v_proj = dense(width, width, dtype=dtype, rngs=rngs)
    self.out_proj = dense(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, kv: jax.Array | None = None,
               mask: jax.Array | None = None, *, key_mask: jax.Array | None = None,
               causal: bool = False) -> jax.Array:
    kv = x if kv is None else kv
    batch, q_len, width = x.shape
    head_dim = width // self.heads
    split_heads = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, head_dim)
    q = split_heads(self.q_proj(x)) * (1.0 / math.sqrt(head_dim))
    out = attend(q, split_heads(self.k_proj(kv)), split_heads(self.v_proj(kv)), mask,
                 key_mask=key_mask, causal=causal, site=self.site)
    return self.out_proj(out.reshape(batch, q_len, width))


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """Index of the last non-padding position per row (works for left or right padding)."""
  positions = jnp.arange(attention_mask.shape[1])
  return jnp.max(jnp.where(attention_mask > 0, positions, 0), axis=1)


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x[b, index[b]] for x of shape (B, L, D)."""
  return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
