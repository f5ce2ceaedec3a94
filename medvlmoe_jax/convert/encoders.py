"""Convert HF encoders into a directory of Orbax params + configs, and load them back.

Layout written by `convert(...)` (and `launch/convert.py`):

  OUT/vision/config.json  OUT/vision/params/   our `model.vision` fields, Orbax params
  OUT/text/config.json    OUT/text/params/     our `model.text` fields, Orbax params
  OUT/tokenizer/                               BioGptTokenizer files
  OUT/conversion.json                          sources and tensor counts
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from medvlmoe_jax.convert import biogpt, clip
from medvlmoe_jax.convert.checkpoint_io import read_config, read_state_dict, resolve_source
from medvlmoe_jax.convert.mapping import param_shapes, rename
from medvlmoe_jax.models.medvlmoe import compute_dtype
from medvlmoe_jax.models.pretrained import assign, read_part
from medvlmoe_jax.models.text import BioGpt
from medvlmoe_jax.models.vision import CLIPVisionTransformer

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def _abstract(module_cls, cfg):
  """The module with shape-only params: target shapes without allocating ~1 GB."""
  return nnx.eval_shape(lambda: module_cls(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)))


def convert_vision(src: str) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
  directory = resolve_source(src)
  cfg = clip.vision_config(read_config(directory))
  targets = param_shapes(_abstract(CLIPVisionTransformer, cfg))
  params = rename(clip.normalise_keys(read_state_dict(directory)), clip.RULES, targets, clip.IGNORE,
                  what=f"vision checkpoint {directory}")
  return cfg, params


def convert_text(src: str) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
  directory = resolve_source(src)
  cfg = biogpt.text_config(read_config(directory))
  targets = param_shapes(_abstract(BioGpt, cfg))
  state = biogpt.normalise_keys(read_state_dict(directory))
  params = rename(state, biogpt.RULES, targets, biogpt.IGNORE, what=f"text checkpoint {directory}")
  return cfg, params


def _write_part(out: str, name: str, cfg, params: dict[str, np.ndarray]):
  part = os.path.join(out, name)
  os.makedirs(part, exist_ok=True)
  with open(os.path.join(part, "config.json"), "w") as f:
    f.write(cfg.to_json(indent=2))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(os.path.abspath(part), "params"), traverse_util.unflatten_dict(params, sep="/"),
              force=True)
  ckptr.wait_until_finished()


def convert(out: str, vision: str | None = None, text: str | None = None,
            tokenizer_release: str | None = None) -> dict:
  """Converts the given encoders into `out`; returns a summary (also saved as conversion.json).

  The tokenizer comes from the text source's files when it has them, else from the original
  release (`dict.txt` + `bpecodes` in `tokenizer_release`).
  """
  os.makedirs(out, exist_ok=True)
  summary: dict = {"sources": {}, "tensors": {}}
  start = time.time()
  for name, src, fn in (("vision", vision, convert_vision), ("text", text, convert_text)):
    if src is None:
      continue
    cfg, params = fn(src)
    _write_part(out, name, cfg, params)
    summary["sources"][name] = src
    summary["tensors"][name] = len(params)
    summary[f"{name}_params"] = int(sum(v.size for v in params.values()))
  tok_dir = os.path.join(out, "tokenizer")
  if text is not None:
    src_dir = resolve_source(text)
    if all(os.path.exists(os.path.join(src_dir, f)) for f in ("vocab.json", "merges.txt")):
      os.makedirs(tok_dir, exist_ok=True)
      for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src_dir, f)):
          shutil.copy(os.path.join(src_dir, f), tok_dir)
      summary["sources"]["tokenizer"] = src_dir
  if tokenizer_release is not None and not os.path.exists(os.path.join(tok_dir, "vocab.json")):
    from medvlmoe_jax.data.tokenizers import write_biogpt_tokenizer
    write_biogpt_tokenizer(os.path.join(tokenizer_release, "dict.txt"),
                           os.path.join(tokenizer_release, "bpecodes"), tok_dir)
    summary["sources"]["tokenizer"] = tokenizer_release
  summary["seconds"] = round(time.time() - start, 2)
  with open(os.path.join(out, "conversion.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def load_vision_encoder(path: str, dtype: str = "float32") -> Callable:
  """f(pixel_values NHWC float32) -> (last_hidden_state, pooler_output), as HF defines them."""
  cfg, params = read_part(path, "vision")
  model = CLIPVisionTransformer(cfg, dtype=compute_dtype(dtype), rngs=nnx.Rngs(0))
  assign(model, params, what=f"{path}/vision")

  @nnx.jit
  def f(model, pixels):
    hidden = model(pixels)
    return hidden, model.pooled(hidden)
  return lambda pixels: f(model, jnp.asarray(pixels, jnp.float32))


def load_text_encoder(path: str, dtype: str = "float32") -> Callable:
  """g(input_ids, attention_mask) -> last_hidden_state (positions from the attention mask)."""
  cfg, params = read_part(path, "text")
  model = BioGpt(cfg, dtype=compute_dtype(dtype), rngs=nnx.Rngs(0))
  assign(model, params, what=f"{path}/text")
  g = nnx.jit(lambda model, ids, mask: model(ids, mask))
  return lambda ids, mask: g(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
