"""The full model: shapes, switches, and the size presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.data import preprocess
from medvlmoe_jax.models.medvlmoe import build_model
from medvlmoe_jax.models.vision import normalize_pixels
from tolerance import float32_atol


def tiny_model_config(**overrides):
  c = config_lib.defaults()
  config_lib.apply_size(c, "tiny", "tiny", "tiny")
  c.model.dtype = "float32"
  c.model.num_classes = 5
  for key, value in overrides.items():
    node = c.model
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c.model


def inputs(batch=3, length=7):
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(2, 200, (batch, length)), jnp.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, 4:] = 0      # right padding
  mask[2, 2:] = 0
  return image, ids, jnp.asarray(mask)


SWITCHES = [
    {},
    {"fusion.gate": "feature"},
    {"fusion.gate": "none"},
    {"moe.residual": False},
    {"moe.granularity": "token"},
    {"moe.capacity_factor": 1.0},
    {"moe.granularity": "token", "moe.capacity_factor": 0.5},
    {"moe.enabled": False},
    {"fusion.enabled": False},
    {"text.enabled": False},
    {"vision_only": True},
    {"fusion.layers": 2},
]


@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_forward_every_switch(overrides):
  model = build_model(tiny_model_config(**overrides))
  image, ids, mask = inputs()
  logits, aux = model(image, ids, mask)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  if overrides.get("moe.enabled", True) and not overrides.get("vision_only"):
    assert 0.0 < float(aux["load_balance_loss"]) < 0.01 * 8 + 1e-6


@pytest.mark.float32_parity
def test_uint8_pixels_are_normalised_on_the_device_exactly():
  """Stored uint8 pixels, normalised in the jitted model, give bit for bit the host's CLIP
  preprocessing (every value, every channel), and the model's output on them equals its
  output on the host-normalised batch."""
  every = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  on_device = jax.jit(normalize_pixels)(jnp.asarray(every))
  assert on_device.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(on_device), preprocess.normalize(every))
  model = build_model(tiny_model_config())
  pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  _, ids, mask = inputs()
  forward = nnx.jit(lambda model, image: model(image, ids, mask)[0])
  np.testing.assert_allclose(forward(model, jnp.asarray(pixels)),
                             forward(model, jnp.asarray(preprocess.normalize(pixels))), atol=1e-6)


@pytest.mark.float32_parity
def test_padding_does_not_change_the_prediction():
  """Extra padding after the text must not change any output (masks everywhere)."""
  for granularity in ("sample", "token"):
    model = build_model(tiny_model_config(**{"moe.granularity": granularity}))
    image, ids, mask = inputs()
    logits, _ = model(image, ids, mask)
    ids_long = jnp.concatenate([ids, jnp.full((3, 5), 7, jnp.int32)], axis=1)
    mask_long = jnp.concatenate([mask, jnp.zeros((3, 5), jnp.int32)], axis=1)
    logits_long, _ = model(image, ids_long, mask_long)
    np.testing.assert_allclose(logits, logits_long, atol=1e-5)


def test_text_changes_the_prediction():
  model = build_model(tiny_model_config())
  image, ids, mask = inputs()
  a, _ = model(image, ids, mask)
  b, _ = model(image, ids.at[:, 0].set(3), mask)
  assert np.max(np.abs(np.asarray(a - b))) > 1e-4


def test_bfloat16_compute_keeps_float32_params():
  model = build_model(tiny_model_config(dtype="bfloat16"))
  image, ids, mask = inputs()
  logits, _ = model(image, ids, mask)
  from flax import nnx
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert logits.dtype == jnp.float32
  ref, _ = build_model(tiny_model_config())(image, ids, mask)
  np.testing.assert_allclose(logits, ref, atol=0.1)


@pytest.mark.parametrize("mask_shape", [None, (4, 1, 6, 6), (4, 1, 1, 6)])
@pytest.mark.float32_parity
def test_blocked_attention_equals_whole_batch(mask_shape):
  """The CPU cache-blocked path (batch chunks in a lax.map) computes the same attention and
  gradients as the whole batch at once, with causal/padding and key-only masks."""
  from medvlmoe_jax.models.layers import attention_core, blocked_attention
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(4, 2, 6, 8)), jnp.float32) for _ in range(3))
  mask = None if mask_shape is None else jnp.asarray(rng.random(mask_shape) < 0.7)
  # 2 examples' scores (2 heads x 6 x 6 float32 each) per chunk: two chunks.
  blocked = lambda q, k, v: blocked_attention(q, k, v, mask, chunk_bytes=2 * 4 * 2 * 36)
  whole = lambda q, k, v: attention_core(q, k, v, mask)
  np.testing.assert_allclose(blocked(q, k, v), whole(q, k, v), atol=1e-6)
  loss = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))
  for gb, gw in zip(loss(blocked)(q, k, v), loss(whole)(q, k, v)):
    np.testing.assert_allclose(gb, gw, atol=1e-6)


def attention_masks(rng, batch, lq, lk):
  causal = np.tril(np.ones((lq, lk), bool))[None, None]
  keys = np.ones((batch, lk), bool)
  keys[1, 4:] = False
  keys[2, :] = False                   # a row with every key masked attends uniformly
  return {"none": None, "causal_padding": causal & keys[:, None, None, :],
          "key_padding": keys[:, None, None, :],
          "random": rng.random((batch, 1, lq, lk)) < 0.6}


@pytest.mark.parametrize("mask_name", ["none", "causal_padding", "key_padding", "random"])
@pytest.mark.float32_parity
def test_dot_product_attention_equals_blocked(mask_name):
  """`jax.nn.dot_product_attention` (the accelerators' path, forced here on the CPU) gives
  the CPU's blocked attention's values and gradients on (B, L, heads, head_dim) inputs."""
  from medvlmoe_jax.models.layers import attend
  from medvlmoe_jax.platform import force_attention
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(4, 6, 2, 8)), jnp.float32) for _ in range(3))
  mask = attention_masks(rng, 4, 6, 6)[mask_name]
  mask = None if mask is None else jnp.asarray(mask)

  def run(impl):
    with force_attention(impl):
      f = lambda q, k, v: attend(q, k, v, mask)
      grads = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(q, k, v)
      return f(q, k, v), grads

  (out, grads), (ref, ref_grads) = run("xla"), run("blocked")
  np.testing.assert_allclose(out, ref, atol=float32_atol(ref, 6))
  for g, r in zip(grads, ref_grads):   # 6 keys per softmax, 6 queries per key gradient
    np.testing.assert_allclose(g, r, atol=float32_atol(r, 6))


# The longest reduction in the tiny model's forward and backward: the MoE's 128-wide hidden
# layer (the fused width 2 x 64), summed over a batch of 3 for the weight gradients.
MODEL_REDUCTION = 3 * 128


@pytest.mark.float32_parity
def test_model_with_dot_product_attention_equals_blocked():
  """The whole model (ViT self-attention, BioGPT causal + padding, the fusion's key padding)
  gives the same logits and gradients through either attention path, float32."""
  from flax import nnx
  from medvlmoe_jax.platform import force_attention
  graphdef, params = nnx.split(build_model(tiny_model_config()), nnx.Param)
  image, ids, mask = inputs()

  def run(impl):
    with force_attention(impl):
      loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(image, ids, mask)[0]))
      return jax.jit(jax.value_and_grad(loss))(params)

  (loss, grads), (ref, ref_grads) = run("xla"), run("blocked")
  np.testing.assert_allclose(loss, ref, atol=float32_atol(ref, MODEL_REDUCTION))
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, atol=float32_atol(r, MODEL_REDUCTION))


@pytest.mark.slow
def test_full_size_model_forward_batch_1():
  """ViT-L/14 + BioGPT + 8 experts: one forward pass on CPU; parameter counts printed."""
  c = config_lib.defaults()
  c.model.dtype = "float32"
  model = build_model(c.model)
  from flax import nnx
  params = nnx.state(model, nnx.Param)
  counts = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}
  print("parameter counts:", {k: f"{v / 1e6:.1f}M" for k, v in counts.items()},
        f"total {sum(counts.values()) / 1e6:.1f}M")
  assert 300e6 < counts["vision"] < 306e6      # CLIP ViT-L/14 vision tower: 303.2M
  assert 344e6 < counts["text"] < 350e6        # BioGPT: 346.8M
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(1, 224, 224, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(2, 42000, (1, 16)), jnp.int32)
  logits, aux = nnx.jit(lambda m, *a: m(*a))(model, image, ids, jnp.ones((1, 16), jnp.int32))
  assert logits.shape == (1, 14) and np.all(np.isfinite(np.asarray(logits)))
  assert aux["expert_index"].shape == (1, 2)
