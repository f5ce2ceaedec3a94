"""Full-size conversion: random-init ViT-L/14 and BioGPT (default config), parity <= 1e-4."""

import gc
import resource
import time

import numpy as np
import pytest
import torch
import transformers as tf

from medvlmoe_jax.convert.encoders import convert, load_text_encoder, load_vision_encoder

pytestmark = [pytest.mark.slow, pytest.mark.float32_parity]


def _peak_gb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def test_full_size_vit_l14(tmp_path):
  torch.manual_seed(0)
  hf = tf.CLIPVisionModel(tf.CLIPVisionConfig(
      hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
      patch_size=14, image_size=224, projection_dim=768)).eval()
  hf.save_pretrained(tmp_path / "src")
  x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    ref = hf(pixel_values=torch.tensor(x.transpose(0, 3, 1, 2)))
  ref_hidden, ref_pooled = ref.last_hidden_state.numpy(), ref.pooler_output.numpy()
  del hf, ref
  gc.collect()
  start = time.time()
  convert(str(tmp_path / "out"), vision=str(tmp_path / "src"))
  seconds = time.time() - start
  hidden, pooled = load_vision_encoder(str(tmp_path / "out"))(x)
  d_hidden = np.abs(np.asarray(hidden) - ref_hidden).max()
  d_pooled = np.abs(np.asarray(pooled) - ref_pooled).max()
  print(f"\nViT-L/14: conversion {seconds:.1f}s, max abs diff last_hidden_state {d_hidden:.2e}, "
        f"pooler {d_pooled:.2e}, peak RSS {_peak_gb():.1f} GB")
  assert d_hidden <= 1e-4 and d_pooled <= 1e-4


def test_full_size_biogpt(tmp_path):
  torch.manual_seed(0)
  hf = tf.BioGptModel(tf.BioGptConfig()).eval()
  hf.save_pretrained(tmp_path / "src")
  rng = np.random.default_rng(0)
  ids = rng.integers(4, 42384, (2, 32))
  mask = np.ones((2, 32), np.int64)
  mask[1, 20:] = 0
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             position_ids=torch.tensor(np.cumsum(mask, 1) * mask - 1)).last_hidden_state.numpy()
  del hf
  gc.collect()
  start = time.time()
  convert(str(tmp_path / "out"), text=str(tmp_path / "src"))
  seconds = time.time() - start
  out = np.asarray(load_text_encoder(str(tmp_path / "out"))(ids, mask))
  diff = np.abs(out - ref).max()
  print(f"\nBioGPT: conversion {seconds:.1f}s, max abs diff last_hidden_state {diff:.2e}, "
        f"peak RSS {_peak_gb():.1f} GB")
  assert diff <= 1e-4
