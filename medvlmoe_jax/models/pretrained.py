"""Loading converted encoder weights (the output of `launch/convert.py`) into a model.

Reading lives here, below training and conversion, so that a run can start from converted
encoders without importing the converter (and torch / transformers with it).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.tree import flat_paths, path_str


class ConversionError(BadInputError):
  """Weights that do not fit the model they are meant for."""


def read_part(path: str, name: str) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
  """The config and flat {path: array} params of converted encoder `name` ('vision', 'text')."""
  part = os.path.join(path, name)
  if not os.path.exists(os.path.join(part, "config.json")):
    raise FileNotFoundError(f"{part}: no converted {name} encoder (run launch/convert.py)")
  with open(os.path.join(part, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  tree = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(part), "params"))
  return cfg, {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def overwrite(params, flat: dict, what: str = "parameters"):
  """`params` (an nnx.State or any pytree) with the leaves named in flat {path: array}
  replaced (cast to the leaf's dtype); every path must exist and every shape agree."""
  have = flat_paths(params)
  unknown = sorted(set(flat) - set(have))
  if unknown:
    raise ConversionError(f"{what}: the model has no parameters " + ", ".join(unknown))
  for path, value in flat.items():
    if tuple(have[path].shape) != tuple(np.shape(value)):
      raise ConversionError(f"{what}: {path} has shape {np.shape(value)}, the model expects "
                            f"{tuple(have[path].shape)}")

  def replace(p, x):
    value = flat.get(path_str(p))
    return x if value is None else jnp.asarray(value, x.dtype)
  return jax.tree_util.tree_map_with_path(replace, params)


def assign(module: nnx.Module, flat: dict[str, np.ndarray], what: str = "parameters") -> None:
  """Writes flat {path: array} into the module's nnx.Params (see `overwrite`)."""
  nnx.update(module, overwrite(nnx.state(module, nnx.Param), flat, what))


def pretrained_params(path: str, model_cfg: ml_collections.ConfigDict,
                      parts=("vision", "text")) -> dict[str, np.ndarray]:
  """Flat {'vision/...': array, 'text/...': array} of the converted encoders in `path` that
  the model has (`parts`); the converted configs must equal the model's."""
  flat = {}
  for name in parts:
    if not os.path.exists(os.path.join(path, name, "config.json")):
      continue
    cfg, params = read_part(path, name)
    mine = model_cfg[name]
    diff = [f"{k}: converted {cfg[k]} vs model.{name}.{k}={mine[k]}" for k in cfg
            if mine.get(k) != cfg[k]]
    if diff:
      raise ConversionError(f"model.init_from={path}: the {name} config differs from the "
                            "converted one:\n  " + "\n  ".join(diff))
    flat.update({f"{name}/{k}": v for k, v in params.items()})
  if not flat:
    raise FileNotFoundError(f"model.init_from={path}: no converted vision/ or text/ encoder there")
  return flat


def model_parts(model) -> tuple[str, ...]:
  """The encoders a MedVLMoE has (the text stream is absent in vision-only ablations)."""
  return tuple(name for name in ("vision", "text") if getattr(model, name, None) is not None)


def init_from(model, path: str, model_cfg: ml_collections.ConfigDict) -> list[str]:
  """Loads converted encoders into a MedVLMoE in place (its fresh projections, fusion, MoE and
  head are kept). Returns the parts loaded."""
  flat = pretrained_params(path, model_cfg, model_parts(model))
  assign(model, flat, what=path)
  return sorted({k.split("/")[0] for k in flat}, key=["vision", "text"].index)
