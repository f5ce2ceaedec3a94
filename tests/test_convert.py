"""HF -> JAX conversion: numerical parity with the PyTorch models, source formats, errors."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import save_file

from medvlmoe_jax.convert.encoders import (convert, convert_text, convert_vision,
                                           load_text_encoder, load_vision_encoder)
from medvlmoe_jax.models.pretrained import init_from
from medvlmoe_jax.convert.mapping import ConversionError

# Float32 results compared to ~1e-5: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity

VISION_CONFIGS = [
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
         image_size=30, patch_size=6),
    dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
         image_size=28, patch_size=14),
]
TEXT_CONFIGS = [
    dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=64, max_position_embeddings=40),
    dict(vocab_size=90, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
         intermediate_size=96, max_position_embeddings=24, scale_embedding=False),
]


def hf_vision(cfg, cls=tf.CLIPVisionModel, seed=0):
  torch.manual_seed(seed)
  return cls(tf.CLIPVisionConfig(**cfg) if cls is tf.CLIPVisionModel else cfg).eval()


def hf_text(cfg, cls=tf.BioGptModel, seed=0):
  torch.manual_seed(seed)
  return cls(tf.BioGptConfig(**cfg)).eval()


def pixels(cfg, batch=3, seed=0):
  size = cfg["image_size"]
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def text_batch(vocab, length=11, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(4, vocab, (3, length))
  mask = np.ones((3, length), np.int64)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  return ids, mask


def torch_vision(model, x):
  with torch.no_grad():
    out = model(pixel_values=torch.tensor(x.transpose(0, 3, 1, 2)))
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def torch_text(model, ids, mask, mask_positions=True):
  """mask_positions: position ids from the attention mask (fairseq / transformers 4), which
  is what we compute; transformers 5 defaults to arange, equal on every real token."""
  kwargs = {}
  if mask_positions:
    kwargs["position_ids"] = torch.tensor(np.cumsum(mask, 1) * mask - 1)
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 **kwargs).last_hidden_state.numpy()


@pytest.mark.parametrize("cfg", VISION_CONFIGS)
def test_vision_parity_float32(cfg, tmp_path):
  hf = hf_vision(cfg)
  hf.save_pretrained(tmp_path / "src")
  convert(str(tmp_path / "out"), vision=str(tmp_path / "src"))
  f = load_vision_encoder(str(tmp_path / "out"))
  x = pixels(cfg)
  hidden, pooled = f(x)
  ref_hidden, ref_pooled = torch_vision(hf, x)
  d_hidden = np.abs(np.asarray(hidden) - ref_hidden).max()
  d_pooled = np.abs(np.asarray(pooled) - ref_pooled).max()
  print(f"vision float32 max abs diff: last_hidden_state {d_hidden:.2e}, pooler {d_pooled:.2e}")
  assert d_hidden <= 1e-5 and d_pooled <= 1e-5


@pytest.mark.parametrize("cfg", TEXT_CONFIGS)
def test_text_parity_float32_padded(cfg, tmp_path):
  hf = hf_text(cfg)
  hf.save_pretrained(tmp_path / "src")
  convert(str(tmp_path / "out"), text=str(tmp_path / "src"))
  g = load_text_encoder(str(tmp_path / "out"))
  ids, mask = text_batch(cfg["vocab_size"])
  ours = np.asarray(g(ids, mask))
  d_all = np.abs(ours - torch_text(hf, ids, mask)).max()
  d_real = np.abs((ours - torch_text(hf, ids, mask, mask_positions=False)) * mask[..., None]).max()
  print(f"text float32 max abs diff: all positions {d_all:.2e}, real tokens (HF 5 default) {d_real:.2e}")
  assert d_all <= 1e-5 and d_real <= 1e-5


def test_bfloat16_difference_is_reported_and_small(tmp_path):
  cfg_v, cfg_t = VISION_CONFIGS[0], TEXT_CONFIGS[0]
  hv, ht = hf_vision(cfg_v), hf_text(cfg_t)
  hv.save_pretrained(tmp_path / "v")
  ht.save_pretrained(tmp_path / "t")
  convert(str(tmp_path / "out"), vision=str(tmp_path / "v"), text=str(tmp_path / "t"))
  x = pixels(cfg_v)
  hidden, _ = load_vision_encoder(str(tmp_path / "out"), dtype="bfloat16")(x)
  ids, mask = text_batch(cfg_t["vocab_size"])
  text = load_text_encoder(str(tmp_path / "out"), dtype="bfloat16")(ids, mask)
  dv = np.abs(np.asarray(hidden, np.float32) - torch_vision(hv, x)[0]).max()
  dt = np.abs(np.asarray(text, np.float32) - torch_text(ht, ids, mask)).max()
  print(f"bfloat16 compute max abs diff: vision {dv:.3e}, text {dt:.3e}")
  assert 1e-5 < dv < 0.25 and 1e-5 < dt < 0.25     # bf16 is lossy, but not broken


def test_half_precision_sources(tmp_path):
  for dtype in (torch.float16, torch.bfloat16):
    hf = hf_vision(VISION_CONFIGS[0])
    hf.to(dtype).save_pretrained(tmp_path / str(dtype))
    hf.float()    # the reference uses the same (rounded) weights in float32
    convert(str(tmp_path / f"out{dtype}"), vision=str(tmp_path / str(dtype)))
    x = pixels(VISION_CONFIGS[0])
    hidden, _ = load_vision_encoder(str(tmp_path / f"out{dtype}"))(x)
    assert np.abs(np.asarray(hidden) - torch_vision(hf, x)[0]).max() <= 1e-5, dtype


def test_sharded_safetensors_and_pytorch_bin(tmp_path):
  cfg = TEXT_CONFIGS[0]
  hf = hf_text(cfg)
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  (tmp_path / "bin").mkdir()
  hf.config.save_pretrained(tmp_path / "bin")
  torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  ids, mask = text_batch(cfg["vocab_size"])
  ref = torch_text(hf, ids, mask)
  for src in ("sharded", "bin"):
    convert(str(tmp_path / f"out_{src}"), text=str(tmp_path / src))
    out = load_text_encoder(str(tmp_path / f"out_{src}"))(ids, mask)
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5, src


def test_full_clip_model_and_causal_lm_sources(tmp_path):
  clip_cfg = tf.CLIPConfig(vision_config=VISION_CONFIGS[0],
                           text_config=dict(hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=4,
                                            vocab_size=99))
  torch.manual_seed(0)
  full = tf.CLIPModel(clip_cfg).eval()
  full.save_pretrained(tmp_path / "clip")
  lm = hf_text(TEXT_CONFIGS[0], cls=tf.BioGptForCausalLM)
  lm.save_pretrained(tmp_path / "lm")
  convert(str(tmp_path / "out"), vision=str(tmp_path / "clip"), text=str(tmp_path / "lm"))
  x = pixels(VISION_CONFIGS[0])
  with torch.no_grad():
    ref = full.vision_model(pixel_values=torch.tensor(x.transpose(0, 3, 1, 2)))
  _, pooled = load_vision_encoder(str(tmp_path / "out"))(x)
  assert np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max() <= 1e-5
  ids, mask = text_batch(TEXT_CONFIGS[0]["vocab_size"])
  out = load_text_encoder(str(tmp_path / "out"))(ids, mask)
  assert np.abs(np.asarray(out) - torch_text(lm.biogpt, ids, mask)).max() <= 1e-5


def _damaged(tmp_path, edit):
  hf = hf_text(TEXT_CONFIGS[0])
  src = tmp_path / "damaged"
  hf.config.save_pretrained(src)
  state = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
  edit(state)
  save_file(state, str(src / "model.safetensors"))
  return str(src)


def test_missing_tensor_is_named(tmp_path):
  src = _damaged(tmp_path, lambda s: s.pop("layers.1.fc2.bias"))
  with pytest.raises(ConversionError, match=r"missing tensors[\s\S]*layers/1/mlp/fc2/bias"):
    convert_text(src)


def test_wrong_shape_is_named(tmp_path):
  def edit(s):
    s["layers.0.self_attn.k_proj.weight"] = s["layers.0.self_attn.k_proj.weight"][:, :-1].copy()
  with pytest.raises(ConversionError, match=r"mis-shaped[\s\S]*layers\.0\.self_attn\.k_proj\.weight"):
    convert_text(_damaged(tmp_path, edit))


def test_extra_tensor_is_named(tmp_path):
  src = _damaged(tmp_path, lambda s: s.update({"layers.0.adapter.weight": np.zeros((2, 2), np.float32)}))
  with pytest.raises(ConversionError, match=r"unexpected tensors[\s\S]*layers\.0\.adapter\.weight"):
    convert_text(src)


def test_wrong_model_type_is_refused(tmp_path):
  hf = hf_text(TEXT_CONFIGS[0])
  hf.save_pretrained(tmp_path / "t")
  with pytest.raises(ConversionError, match="model_type 'biogpt'"):
    convert_vision(str(tmp_path / "t"))


def test_init_from_loads_encoders_and_keeps_fresh_head(tmp_path):
  from flax import nnx

  from medvlmoe_jax import config as config_lib
  from medvlmoe_jax.models.medvlmoe import build_model
  cfg_v = dict(VISION_CONFIGS[0])
  hv, ht = hf_vision(cfg_v), hf_text(TEXT_CONFIGS[0])
  hv.save_pretrained(tmp_path / "v")
  ht.save_pretrained(tmp_path / "t")
  out = str(tmp_path / "out")
  convert(out, vision=str(tmp_path / "v"), text=str(tmp_path / "t"))
  c = config_lib.defaults()
  config_lib.apply_size(c, "tiny", "tiny", "tiny")
  with open(os.path.join(out, "vision", "config.json")) as f:
    c.model.vision.update(json.load(f))
  with open(os.path.join(out, "text", "config.json")) as f:
    c.model.text.update(json.load(f))
  c.model.dtype = "float32"
  model = build_model(c.model)
  head_before = np.asarray(model.classifier.kernel[...]).copy()
  assert init_from(model, out, c.model) == ["vision", "text"]
  x = pixels(cfg_v)
  hidden = model.vision(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(hidden), torch_vision(hv, x)[0], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(model.classifier.kernel[...]), head_before)
  c.model.vision.layers = 5
  with pytest.raises(ConversionError, match="layers: converted 2 vs model.vision.layers=5"):
    init_from(build_model(c.model), out, c.model)
  del nnx
