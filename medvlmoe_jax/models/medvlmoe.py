"""MedVLMoE: vision + text streams -> cross-attention fusion -> gate -> sparse MoE -> classifier.

Every ablation of the paper's Table 2 is a config switch here (docs/design.md §2):
`moe.enabled=False` replaces the MoE by one FFN as wide as the top_k active experts;
`fusion.enabled=False` concatenates the pooled projected streams; `text.enabled=False`
drops the text stream (the head then works on the d-wide vision vector);
`vision_only=True` is the ViT alone with a linear classifier on its pooled output.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from medvlmoe_jax.models.fusion import (BidirectionalCrossAttention, ModalityGate,
                                        StreamProjection)
from medvlmoe_jax.models.layers import last_token_index, layer_norm, take_rows
from medvlmoe_jax.models.text import BioGpt
from medvlmoe_jax.models.vision import CLIPVisionTransformer
from medvlmoe_jax.moe.layer import DenseFFN, SparseMoE
from medvlmoe_jax.nn import dense

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
GRANULARITIES = ("sample", "token")


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"model.dtype={name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


class MedVLMoE(nnx.Module):

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    self.dtype = dtype
    self.vision_only = cfg.vision_only
    self.use_text = cfg.text.enabled and not cfg.vision_only
    self.use_fusion = cfg.fusion.enabled and self.use_text
    self.granularity = cfg.moe.granularity
    if self.granularity not in GRANULARITIES:
      raise ValueError(f"model.moe.granularity={self.granularity!r} is not one of {GRANULARITIES}")
    self.residual = cfg.moe.residual or self.granularity == "token"
    d = cfg.fusion.dim

    remat = cfg.get("remat", "none")   # absent from configs saved before it existed
    self.vision = CLIPVisionTransformer(cfg.vision, dtype=dtype, rngs=rngs, remat=remat)
    if self.vision_only:
      self.classifier = dense(cfg.vision.width, cfg.num_classes, dtype=dtype, rngs=rngs)
      return
    num_patches = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    self.vision_proj = StreamProjection(cfg.vision.width, d, num_patches + 1, dtype=dtype, rngs=rngs)
    if self.use_text:
      self.text = BioGpt(cfg.text, dtype=dtype, rngs=rngs, remat=remat)
      self.text_proj = StreamProjection(cfg.text.width, d, cfg.fusion.max_text_len,
                                        dtype=dtype, rngs=rngs)
    if self.use_fusion:
      self.fusion = nnx.List([BidirectionalCrossAttention(d, cfg.fusion.heads, dtype=dtype, rngs=rngs)
                              for _ in range(cfg.fusion.layers)])
    use_gate = self.use_text and cfg.fusion.gate != "none"
    self.gate = ModalityGate(d, cfg.fusion.gate, dtype=dtype, rngs=rngs) if use_gate else None

    head_width = d * (2 if self.use_text else 1)
    moe_width = d if self.granularity == "token" else head_width
    if cfg.moe.enabled:
      self.moe = SparseMoE(moe_width, cfg.moe.hidden, num_experts=cfg.moe.num_experts,
                           top_k=cfg.moe.top_k, capacity_factor=cfg.moe.capacity_factor,
                           alpha=cfg.moe.alpha, dtype=dtype, rngs=rngs,
                           dispatch=cfg.moe.get("dispatch", "auto"))
    else:
      self.moe = DenseFFN(moe_width, cfg.moe.hidden * cfg.moe.top_k, dtype=dtype, rngs=rngs)
    self.moe_norm = layer_norm(moe_width, eps=1e-5, dtype=dtype, rngs=rngs) if self.residual else None
    self.classifier = dense(head_width, cfg.num_classes, dtype=dtype, rngs=rngs)

  def _moe(self, x, valid, counted):
    y, aux = self.moe(x, valid, counted)
    if self.residual:
      y = self.moe_norm(x + y.astype(x.dtype))
    return y, aux

  def __call__(self, image, input_ids=None, attention_mask=None, valid=None):
    """Returns (logits (B, C) float32, aux dict of named auxiliary losses and routing info).

    `valid` (B,) bool marks real examples; padding rows (False) are computed but never
    routed: they take no expert capacity (nor count toward it) and stay out of the
    load-balance statistics.
    """
    batch = image.shape[0]
    valid = jnp.ones((batch,), bool) if valid is None else valid.astype(bool)
    v = self.vision(image)
    v = self.vision.post_layernorm(v)
    if self.vision_only:
      return self.classifier(v[:, 0]).astype(jnp.float32), {}
    zv = self.vision_proj(v)
    if self.use_text:
      if input_ids is None or attention_mask is None:
        raise ValueError("the text stream is enabled but no input_ids/attention_mask were given")
      zt = self.text_proj(self.text(input_ids, attention_mask))
      if self.use_fusion:
        for block in self.fusion:
          zv, zt = block(zv, zt, attention_mask)
      last = last_token_index(attention_mask)

    if self.granularity == "token":
      tokens, routed = zv, jnp.broadcast_to(valid[:, None], zv.shape[:2])
      if self.use_text:
        tokens = jnp.concatenate([zv, zt], axis=1)
        routed = jnp.concatenate([routed, valid[:, None] & (attention_mask > 0)], axis=1)
      counted = jnp.broadcast_to(valid[:, None], tokens.shape[:2])   # a real example's tokens
      y, aux = self._moe(tokens.reshape(-1, tokens.shape[-1]), routed.reshape(-1),
                         counted.reshape(-1))
      y = y.reshape(tokens.shape)
      zv = y[:, :zv.shape[1]]
      if self.use_text:
        zt = y[:, zv.shape[1]:]

    fv = zv[:, 0]
    gate = None
    if self.use_text:
      ft = take_rows(zt, last)
      if self.gate is not None:
        f, gate = self.gate(fv, ft)
      else:
        f = jnp.concatenate([fv, ft], axis=-1)
    else:
      f = fv

    if self.granularity == "sample":
      f, aux = self._moe(f, valid, valid)
    if gate is not None:
      aux = dict(aux, gate=gate)
    return self.classifier(f).astype(jnp.float32), aux


def build_model(model_cfg: ml_collections.ConfigDict, seed: int = 0) -> MedVLMoE:
  return MedVLMoE(model_cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(model_cfg: ml_collections.ConfigDict, seed: int = 0):
  """(abstract model, graphdef, abstract params): shapes and structure with no parameter
  allocated, for building state where it lives or restoring it from a checkpoint."""
  model = nnx.eval_shape(lambda: build_model(model_cfg, seed))
  graphdef, params = nnx.split(model, nnx.Param)
  return model, graphdef, params
