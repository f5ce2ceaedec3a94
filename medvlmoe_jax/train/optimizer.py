"""AdamW with per-group learning rates chosen by regex on parameter paths (big_vision style).

Each group gets linear warmup then cosine decay to zero; a group whose lr is 0 is frozen
(`optax.set_to_zero`: no update, no Adam moments). Global-norm clipping sees all groups.
"""

from __future__ import annotations

import re

import jax
import ml_collections
import optax

from medvlmoe_jax.tree import tree_paths


def group_labels(params, groups) -> object:
  def label(path: str) -> str:
    for name, pattern in groups:
      if re.search(pattern, path):
        return name
    raise ValueError(f"parameter {path} matches no optimizer group in optim.groups")
  return jax.tree.map(label, tree_paths(params))


def decay_mask(params, no_decay: str):
  return jax.tree.map(lambda p: re.search(no_decay, p) is None, tree_paths(params))


def schedules(optim: ml_collections.ConfigDict, steps_per_epoch: int, epochs: float,
              warmup_epochs: float) -> dict[str, optax.Schedule]:
  total = max(int(round(epochs * steps_per_epoch)), 1)
  warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
  out = {}
  for name, _ in optim.groups:
    peak = float(optim.lr[name])
    out[name] = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0)
  return out


def make_optimizer(optim: ml_collections.ConfigDict, params, scheds: dict[str, optax.Schedule]):
  transforms = {}
  for name, _ in optim.groups:
    if float(optim.lr[name]) == 0.0:
      transforms[name] = optax.set_to_zero()
    else:
      transforms[name] = optax.adamw(scheds[name], b1=optim.b1, b2=optim.b2,
                                     weight_decay=optim.weight_decay,
                                     mask=decay_mask(params, optim.no_decay))
  tx = optax.multi_transform(transforms, group_labels(params, optim.groups))
  if optim.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
  return tx
