"""MedVLMoE: vision + text streams -> cross-attention fusion -> gate -> sparse MoE -> classifier.

Every ablation of the paper's Table 2 is a config switch here (docs/design.md §2):
`moe.enabled=False` replaces the MoE by one FFN as wide as the top_k active experts;
`fusion.enabled=False` concatenates the pooled projected streams; `text.enabled=False`
drops the text stream (the head then works on the d-wide vision vector);
`vision_only=True` is the ViT alone with a linear classifier on its pooled output.

Across datasets and modalities (docs/design.md §2): `heads` gives one classifier per dataset
(the logits of all heads, concatenated); `moe.router_context` adds the example's modality
embedding or its pooled text to the router's input; `vision.feature_layers` feeds hidden
states of several depths into the fusion as visual tokens; `align` exposes the pooled image
and text projections and a learned temperature for the image-text alignment loss.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
from flax import nnx

from medvlmoe_jax.models.fusion import (BidirectionalCrossAttention, ModalityGate,
                                        StreamProjection)
from medvlmoe_jax.models.layers import embedding_table, last_token_index, layer_norm, take_rows
from medvlmoe_jax.models.text import BioGpt
from medvlmoe_jax.models.vision import CLIPVisionTransformer
from medvlmoe_jax.moe.layer import DenseFFN, SparseMoE
from medvlmoe_jax.moe.routing import expert_assignment_share
from medvlmoe_jax.nn import dense

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
GRANULARITIES = ("sample", "token")
ROUTER_CONTEXTS = ("none", "modality", "text")
LOG_SCALE_INIT = math.log(1 / 0.07)    # CLIP's initial temperature


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

    # Keys absent from configs saved before they existed take their defaults.
    remat = cfg.get("remat", "none")
    self.heads = tuple(cfg.get("heads", ())) or (cfg.num_classes,)
    self.router_context = cfg.moe.get("router_context", "none")
    if self.router_context not in ROUTER_CONTEXTS:
      raise ValueError(f"model.moe.router_context={self.router_context!r} is not one of "
                       f"{ROUTER_CONTEXTS}")
    self.feature_layers = tuple(cfg.vision.get("feature_layers", ()))
    self.align = cfg.get("align", False)
    self.vision = CLIPVisionTransformer(cfg.vision, dtype=dtype, rngs=rngs, remat=remat)
    if self.vision_only:
      self.classifier = self._heads(cfg.vision.width, dtype, rngs)
      return
    self.num_tokens = (cfg.vision.image_size // cfg.vision.patch_size) ** 2 + 1
    if self.feature_layers:   # one projection (and learned type vector: the scale's) per depth
      bad = [l for l in self.feature_layers if not 1 <= l <= cfg.vision.layers]
      if bad or len(set(self.feature_layers)) != len(self.feature_layers):
        raise ValueError(f"model.vision.feature_layers={self.feature_layers}: distinct layers "
                         f"in 1..{cfg.vision.layers}")
      self.vision_proj = nnx.List([
          StreamProjection(cfg.vision.width, d, self.num_tokens, dtype=dtype, rngs=rngs)
          for _ in self.feature_layers])
    else:
      self.vision_proj = StreamProjection(cfg.vision.width, d, self.num_tokens, dtype=dtype,
                                          rngs=rngs)
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
    if self.router_context != "none" and not cfg.moe.enabled:
      raise ValueError("model.moe.router_context needs the MoE (model.moe.enabled)")
    if self.router_context == "modality":
      self.modality_embedding = embedding_table(cfg.get("num_modalities", 1), moe_width, rngs)
    elif self.router_context == "text":
      if not self.use_text:
        raise ValueError("model.moe.router_context='text' needs the text stream")
      self.router_text = dense(d, moe_width, dtype=dtype, rngs=rngs)
    if self.align:
      if not self.use_text:
        raise ValueError("model.align needs the text stream")
      self.log_scale = nnx.Param(jnp.asarray(LOG_SCALE_INIT, jnp.float32))
    self.classifier = self._heads(head_width, dtype, rngs)

  def _heads(self, width, dtype, rngs):
    """One classifier, or one per dataset (`heads`), whose logits are concatenated."""
    if len(self.heads) == 1:
      return dense(width, self.heads[0], dtype=dtype, rngs=rngs)
    return nnx.List([dense(width, c, dtype=dtype, rngs=rngs) for c in self.heads])

  def _classify(self, f):
    if isinstance(self.classifier, nnx.List):
      return jnp.concatenate([h(f).astype(jnp.float32) for h in self.classifier], axis=-1)
    return self.classifier(f).astype(jnp.float32)

  def _router_context(self, modality, zt, last, batch):
    """(B, moe width) added to the router's input, or None."""
    if self.router_context == "modality":
      modality = jnp.zeros((batch,), jnp.int32) if modality is None else modality
      return self.modality_embedding[...][modality].astype(self.dtype)
    if self.router_context == "text":
      return self.router_text(take_rows(zt, last))
    return None

  def _moe(self, x, valid, counted, context=None):
    y, aux = self.moe(x, valid, counted, context)
    if self.residual:
      y = self.moe_norm(x + y.astype(x.dtype))
    return y, aux

  def _visual_tokens(self, image):
    """(B, S x N, d): the projected tokens of every scale (the last layer alone by default),
    and the position of the pooled image token (the deepest scale's class token)."""
    if not self.feature_layers:
      return self.vision_proj(self.vision.post_layernorm(self.vision(image))), 0
    states = self.vision(image, self.feature_layers)
    z = [proj(self.vision.post_layernorm(h)) for proj, h in zip(self.vision_proj, states)]
    deepest = self.feature_layers.index(max(self.feature_layers))
    return jnp.concatenate(z, axis=1), deepest * self.num_tokens

  def __call__(self, image, input_ids=None, attention_mask=None, valid=None, modality=None):
    """Returns (logits (B, C) float32, aux dict of named auxiliary losses and routing info).

    `valid` (B,) bool marks real examples; padding rows (False) are computed but never
    routed: they take no expert capacity (nor count toward it) and stay out of the
    load-balance statistics. `modality` (B,) int: each example's modality id, for
    `router_context='modality'` (all 0 when None: one modality).
    """
    batch = image.shape[0]
    valid = jnp.ones((batch,), bool) if valid is None else valid.astype(bool)
    if self.vision_only:
      v = self.vision.post_layernorm(self.vision(image))
      return self._classify(v[:, 0]), {}
    zv, pooled = self._visual_tokens(image)
    embeddings = {}
    zt = last = None
    if self.use_text:
      if input_ids is None or attention_mask is None:
        raise ValueError("the text stream is enabled but no input_ids/attention_mask were given")
      zt = self.text_proj(self.text(input_ids, attention_mask))
      last = last_token_index(attention_mask)
      if self.align:   # before fusion: an image's embedding must not have read its own text
        embeddings = {"image_embedding": zv[:, pooled].astype(jnp.float32),
                      "text_embedding": take_rows(zt, last).astype(jnp.float32),
                      "log_scale": self.log_scale[...]}
      if self.use_fusion:
        for block in self.fusion:
          zv, zt = block(zv, zt, attention_mask)

    if self.granularity == "token":
      tokens, routed = zv, jnp.broadcast_to(valid[:, None], zv.shape[:2])
      if self.use_text:
        tokens = jnp.concatenate([zv, zt], axis=1)
        routed = jnp.concatenate([routed, valid[:, None] & (attention_mask > 0)], axis=1)
      counted = jnp.broadcast_to(valid[:, None], tokens.shape[:2])   # a real example's tokens
      context = self._router_context(modality, zt, last, batch)
      if context is not None:
        context = jnp.broadcast_to(context[:, None], tokens.shape).reshape(-1, tokens.shape[-1])
      y, aux = self._moe(tokens.reshape(-1, tokens.shape[-1]), routed.reshape(-1),
                         counted.reshape(-1), context)
      if self.feature_layers and "expert_index" in aux:
        aux = dict(aux, expert_share_by_scale=self._share_by_scale(aux["expert_index"], routed))
      y = y.reshape(tokens.shape)
      zv = y[:, :zv.shape[1]]
      if self.use_text:
        zt = y[:, zv.shape[1]:]

    fv = zv[:, pooled]
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
      f, aux = self._moe(f, valid, valid, self._router_context(modality, zt, last, batch))
    if gate is not None:
      aux = dict(aux, gate=gate)
    return self._classify(f), dict(aux, **embeddings)

  def _share_by_scale(self, expert_index, routed):
    """(S, K): each visual scale's share of its tokens' assignments per expert."""
    batch, num_experts = routed.shape[0], self.moe.num_experts
    index = expert_index.reshape(batch, routed.shape[1], -1)
    n = self.num_tokens
    return jnp.stack([
        expert_assignment_share(index[:, s * n:(s + 1) * n].reshape(-1, index.shape[-1]),
                                num_experts, routed[:, s * n:(s + 1) * n].reshape(-1))
        for s in range(len(self.feature_layers))])


def build_model(model_cfg: ml_collections.ConfigDict, seed: int = 0) -> MedVLMoE:
  return MedVLMoE(model_cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(model_cfg: ml_collections.ConfigDict, seed: int = 0):
  """(abstract model, graphdef, abstract params): shapes and structure with no parameter
  allocated, for building state where it lives or restoring it from a checkpoint."""
  model = nnx.eval_shape(lambda: build_model(model_cfg, seed))
  graphdef, params = nnx.split(model, nnx.Param)
  return model, graphdef, params
