"""The CLIP ViT vision stream, computed exactly as HF `CLIPVisionModel`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.data.preprocess import CLIP_TABLE
from medvlmoe_jax.models.layers import Attention, embedding_table, layer_norm
from medvlmoe_jax.nn import MLP, check_remat, remat as rematerialise


class CLIPEncoderLayer(nnx.Module):
  """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  def __init__(self, width, heads, mlp_dim, eps, *, dtype, rngs):
    self.layer_norm1 = layer_norm(width, eps=eps, dtype=dtype, rngs=rngs)
    self.self_attn = Attention(width, heads, dtype=dtype, rngs=rngs, site="vision_self")
    self.layer_norm2 = layer_norm(width, eps=eps, dtype=dtype, rngs=rngs)
    self.mlp = MLP(width, mlp_dim, "quick_gelu", dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


def normalize_pixels(pixels: jax.Array) -> jax.Array:
  """uint8 (..., 3) -> CLIP-normalised float32, on the device: batches cross to the device as
  uint8 (a quarter of the bytes, no host arithmetic), and the lookup in `CLIP_TABLE` gives
  exactly the host's `clip_preprocess` values."""
  table = jnp.asarray(CLIP_TABLE)
  return table[pixels.astype(jnp.int32), jnp.arange(table.shape[1])]


class CLIPVisionTransformer(nnx.Module):
  """Patch conv (no bias), class token, learned positions, pre_layrnorm, blocks, post_layernorm.

  `__call__` returns HF's `last_hidden_state` (before `post_layernorm`); the model applies
  `post_layernorm` to every token, so that `V[:, 0]` is HF's `pooler_output`. `remat` is a
  `model.remat` policy applied to each block (`medvlmoe_jax.nn.remat`).
  """

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, remat: str = "none"):
    width, patch = cfg.width, cfg.patch_size
    if cfg.image_size % patch:
      raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {patch}")
    self.num_patches = (cfg.image_size // patch) ** 2
    self.dtype = dtype
    self.remat = check_remat(remat)
    self.patch_embedding = nnx.Conv(
        cfg.channels, width, kernel_size=(patch, patch), strides=(patch, patch),
        padding="VALID", use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.class_embedding = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (width,), jnp.float32))
    self.position_embedding = embedding_table(self.num_patches + 1, width, rngs)
    self.pre_layrnorm = layer_norm(width, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([
        CLIPEncoderLayer(width, cfg.heads, cfg.mlp_dim, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        for _ in range(cfg.layers)])
    self.post_layernorm = layer_norm(width, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

  def __call__(self, pixels: jax.Array, layers: tuple[int, ...] = ()):
    """`pixels`: (B, H, W, 3) uint8 as stored, normalised here (`normalize_pixels`), or
    float already normalised (HF's `pixel_values`, NHWC). With `layers` (1-based, as HF's
    `hidden_states[i]`), the list of those layers' outputs instead of the last one."""
    if pixels.dtype == jnp.uint8:
      pixels = normalize_pixels(pixels)
    patches = self.patch_embedding(pixels.astype(self.dtype))
    batch = patches.shape[0]
    patches = patches.reshape(batch, -1, patches.shape[-1])
    if patches.shape[1] != self.num_patches:
      raise ValueError(f"image gives {patches.shape[1]} patches, the model expects "
                       f"{self.num_patches}: check data.image_size against model.vision.image_size")
    cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (batch, 1, patches.shape[-1]))
    x = jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(self.dtype)
    x = self.pre_layrnorm(x)
    block = rematerialise(lambda layer, x: layer(x), self.remat)
    kept = {}
    for i, layer in enumerate(self.layers, 1):
      x = block(layer, x)
      if i in layers:
        kept[i] = x
    return [kept[i] for i in layers] if layers else x

  def pooled(self, hidden: jax.Array) -> jax.Array:
    """HF `pooler_output`: post_layernorm of the class token."""
    return self.post_layernorm(hidden[:, 0])
