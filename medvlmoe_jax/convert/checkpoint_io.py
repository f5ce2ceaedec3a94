"""Reading Hugging Face checkpoints as float32 NumPy arrays, without torch where possible.

A source is a local directory as `save_pretrained` / `huggingface_hub` write it (config.json
plus model.safetensors, sharded safetensors with an index, or pytorch_model.bin), or a hub id
fetched with `huggingface_hub.snapshot_download` when the machine has network.
"""

from __future__ import annotations

import json
import os

# Imported for its side effect too: it registers numpy's 'bfloat16' dtype, without which
# safetensors' numpy loader cannot read BF16 tensors (torch is not needed for them).
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from medvlmoe_jax.cli import BadInputError


def resolve_source(src: str) -> str:
  """A local directory as is; anything else is taken for a hub id and downloaded."""
  if os.path.isdir(src):
    return src
  if os.path.exists(src) or src.startswith((".", "/")):
    raise FileNotFoundError(f"{src}: not a checkpoint directory")
  from huggingface_hub import snapshot_download
  return snapshot_download(src, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"])


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one .safetensors file, read by safetensors' numpy loader (BF16 comes
  back as ml_dtypes.bfloat16); an unreadable file is an error naming it."""
  try:
    return safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, TypeError) as e:
    raise BadInputError(f"{path}: {e}") from e


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{path}: reading pytorch_model.bin needs torch (or convert the "
                      "checkpoint to safetensors)") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory; floating tensors come back as float32."""
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  bin_path = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(single):
    tensors = read_safetensors(single)
  elif os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(read_safetensors(os.path.join(directory, shard)))
  elif os.path.exists(bin_path):
    tensors = _read_torch_bin(bin_path)
  else:
    raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json "
                            "or pytorch_model.bin")
  floating = lambda v: np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16
  return {k: v.astype(np.float32) if floating(v) else v for k, v in tensors.items()}


def read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory}: no config.json")
  with open(path) as f:
    return json.load(f)
