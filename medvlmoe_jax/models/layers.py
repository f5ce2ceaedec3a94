"""Building blocks shared by the CLIP vision stream, the BioGPT text stream and the fusion.

Attribute names follow Hugging Face (`q_proj`, `out_proj`, `fc1`, ...) so that weight
conversion is a renaming, not a reinterpretation.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.nn import INIT, dense


def layer_norm(width: int, *, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Flax computes the statistics in float32 even when `dtype` is bfloat16.
  return nnx.LayerNorm(width, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def embedding_table(rows: int, width: int, rngs: nnx.Rngs) -> nnx.Param:
  return nnx.Param(INIT(rngs.params(), (rows, width), jnp.float32))


# Score tensors above this many bytes are computed a batch chunk at a time on CPUs, so that
# the float32 logits -> softmax -> probs passes stay in cache (a ViT-L/14 image has 4 MB of
# scores; 8 images at once miss a 32 MB L3 and run ~2x slower).
CPU_SCORE_CHUNK_BYTES = 4 * 2**20


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
  the whole batch at once on accelerators, where XLA fuses attention without the help."""
  batch, heads, q_len, _ = q.shape
  if chunk_bytes is None:
    chunk_bytes = CPU_SCORE_CHUNK_BYTES if jax.default_backend() == "cpu" else None
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


ATTENTION_IMPLEMENTATIONS = ("blocked", "xla", "cudnn")
_forced_attention: str | None = None


@contextlib.contextmanager
def force_attention(implementation: str):
  """Trace attention with `implementation` whatever the backend (tests, and the memory
  benchmark's accelerator path on a CPU). It acts at tracing: a function jit has already
  traced keeps the implementation it was traced with."""
  global _forced_attention
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} is not one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")
  previous, _forced_attention = _forced_attention, implementation
  try:
    yield
  finally:
    _forced_attention = previous


def attention_implementation(dtype, head_dim: int) -> str:
  """'blocked' on CPUs (faster there than `jax.nn.dot_product_attention`'s XLA path, see
  `blocked_attention`); cuDNN's fused flash attention on GPUs where it applies (bf16/fp16,
  head_dim a multiple of 8 up to 128: `implementation=None` would pick XLA's path, JAX
  0.10); `jax.nn.dot_product_attention`'s XLA path elsewhere."""
  if _forced_attention is not None:
    return _forced_attention
  backend = jax.default_backend()
  if backend == "cpu":
    return "blocked"
  if (backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128):
    return "cudnn"
  return "xla"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
  """softmax(q k^T) v on (B, L, heads, head_dim) arrays, q already scaled; `mask` as in
  `Attention`. Every implementation keeps logits and softmax in float32, and a query row
  with every key masked attends uniformly."""
  impl = attention_implementation(q.dtype, q.shape[-1])
  if impl == "blocked":
    heads_first = lambda t: t.transpose(0, 2, 1, 3)
    out = blocked_attention(heads_first(q), heads_first(k), heads_first(v), mask)
    return heads_first(out)
  if mask is not None and impl == "cudnn":   # cuDNN takes the mask as a (B, 1, Lq, Lk) bias
    mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation=impl)


class Attention(nnx.Module):
  """Multi-head attention with separate q/k/v/out projections (HF layout).

  `mask` is boolean, broadcastable to (B, heads, Lq, Lk), True where attention is allowed.
  Logits and softmax run in float32 whatever the compute dtype. A query row with every key
  masked attends uniformly, as HF's additive-minimum masks do.
  """

  def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs):
    if width % heads:
      raise ValueError(f"width {width} is not divisible by heads {heads}")
    self.heads = heads
    self.dtype = dtype
    self.q_proj = dense(width, width, dtype=dtype, rngs=rngs)
    self.k_proj = dense(width, width, dtype=dtype, rngs=rngs)
    self.v_proj = dense(width, width, dtype=dtype, rngs=rngs)
    self.out_proj = dense(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, kv: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    kv = x if kv is None else kv
    batch, q_len, width = x.shape
    head_dim = width // self.heads
    split_heads = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, head_dim)
    q = split_heads(self.q_proj(x)) * (1.0 / math.sqrt(head_dim))
    out = attend(q, split_heads(self.k_proj(kv)), split_heads(self.v_proj(kv)), mask)
    return self.out_proj(out.reshape(batch, q_len, width))


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """Index of the last non-padding position per row (works for left or right padding)."""
  positions = jnp.arange(attention_mask.shape[1])
  return jnp.max(jnp.where(attention_mask > 0, positions, 0), axis=1)


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x[b, index[b]] for x of shape (B, L, D)."""
  return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
