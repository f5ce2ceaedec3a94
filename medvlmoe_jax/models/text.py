"""The BioGPT text stream, computed as HF `BioGptModel` (no cache, no dropout at eval)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.models.layers import Attention, embedding_table, layer_norm
from medvlmoe_jax.nn import MLP, check_remat, remat as rematerialise

POSITION_OFFSET = 2  # BioGPT (fairseq) reserves the first two position rows.


class BioGptDecoderLayer(nnx.Module):
  """Causal pre-LN block with exact GELU. The MLP keeps HF's flat `fc1`/`fc2` names."""

  def __init__(self, width, heads, ffn_dim, eps, *, dtype, rngs):
    self.self_attn_layer_norm = layer_norm(width, eps=eps, dtype=dtype, rngs=rngs)
    self.self_attn = Attention(width, heads, dtype=dtype, rngs=rngs, site="text_causal")
    self.final_layer_norm = layer_norm(width, eps=eps, dtype=dtype, rngs=rngs)
    self.mlp = MLP(width, ffn_dim, "gelu", dtype=dtype, rngs=rngs)

  def __call__(self, x, key_mask):
    x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask=key_mask, causal=True)
    return x + self.mlp(self.final_layer_norm(x))


class BioGpt(nnx.Module):
  """Scaled token embeddings + learned positions (offset 2, from the attention mask).

  LayerNorm eps is 1e-5 as in the torch modules (HF's config field says 1e-12 but the
  modules never read it). `remat` is a `model.remat` policy applied to each layer
  (`medvlmoe_jax.nn.remat`).
  """

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, remat: str = "none"):
    self.dtype = dtype
    self.remat = check_remat(remat)
    self.embed_scale = math.sqrt(cfg.width) if cfg.scale_embedding else 1.0
    self.embed_tokens = embedding_table(cfg.vocab_size, cfg.width, rngs)
    self.embed_positions = embedding_table(cfg.max_positions + POSITION_OFFSET, cfg.width, rngs)
    self.layers = nnx.List([
        BioGptDecoderLayer(cfg.width, cfg.heads, cfg.ffn_dim, cfg.layer_norm_eps,
                           dtype=dtype, rngs=rngs)
        for _ in range(cfg.layers)])
    self.layer_norm = layer_norm(cfg.width, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    attention_mask = attention_mask.astype(jnp.int32)
    # Padding rows get position -1 (+2 offset = row 1), exactly as fairseq/HF v4 compute it.
    positions = jnp.cumsum(attention_mask, axis=1) * attention_mask - 1 + POSITION_OFFSET
    x = self.embed_tokens[...][input_ids] * self.embed_scale
    x = (x + self.embed_positions[...][positions]).astype(self.dtype)
    key_mask = attention_mask > 0     # with causality: the mask HF builds
    block = rematerialise(lambda layer, x, key_mask: layer(x, key_mask), self.remat)
    for layer in self.layers:
      x = block(layer, x, key_mask)
    return self.layer_norm(x)
