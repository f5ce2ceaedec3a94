"""CLIP-style symmetric InfoNCE for image-text alignment, in float32."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# CLIP's clamp: the scale never exceeds 100, so that a runaway temperature cannot make the
# softmax one-hot and the training unstable. (The model holds the parameter, initialised at
# CLIP's tau = 0.07: models.medvlmoe.LOG_SCALE_INIT.)
LOG_SCALE_MAX = math.log(100.0)
# Logit for padding rows: exp(_MASKED - max) is exactly 0 in float32, and still finite.
_MASKED = -1e9


def _l2_normalize(x):
  """A zero row stays zero (eps) instead of becoming NaN."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def info_nce(image_emb, text_emb, log_scale, valid=None) -> jax.Array:
  """Mean of the image->text and text->image cross-entropies, the diagonal as targets.

  The batch is the GLOBAL batch: under jit with the rows sharded over data-parallel devices
  (`sharding.batch_sharding`), XLA computes the (B, B) similarity over all devices' rows
  (it all-gathers one side), so every example sees every other device's negatives, as in
  CLIP. The mean of per-device losses would not: its negatives would come from one shard.

  `log_scale` is clamped in the forward pass (CLIP clamps the parameter after each update),
  so its gradient is 0 above log(100). `valid` (B,) bool drops padding rows entirely: they
  are neither queries nor candidates (negatives), so a padded final batch gives the loss of
  its real rows. The (B, B) matmul runs at full float32 precision: a scale of up to 100
  would turn TF32's ~1e-3 rounding into logit errors of ~0.1.
  """
  shape, text_shape = jnp.shape(image_emb), jnp.shape(text_emb)
  if len(shape) != 2 or shape != text_shape:
    raise ValueError(f"image {shape} and text {text_shape} embeddings must be equal (B, D)")
  img, txt = _l2_normalize(image_emb), _l2_normalize(text_emb)
  scale = jnp.exp(jnp.minimum(jnp.asarray(log_scale, jnp.float32), LOG_SCALE_MAX))
  logits = scale * jnp.matmul(img, txt.T, precision=jax.lax.Precision.HIGHEST)
  b = logits.shape[0]
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid, bool)
  logits = jnp.where(valid[:, None] & valid[None, :], logits, _MASKED)
  target = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(logits, axis=1) - target   # image i against all texts
  t2i = jax.nn.logsumexp(logits, axis=0) - target   # text j against all images
  per_row = jnp.where(valid, 0.5 * (i2t + t2i), 0.0)
  return jnp.sum(per_row) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
