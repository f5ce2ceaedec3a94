"""AdamW with per-group learning rates chosen by regex on parameter paths (big_vision style).

Each group gets linear warmup then cosine decay to zero; a group whose lr is 0 is frozen
(`optax.set_to_zero`: no update, no Adam moments). Global-norm clipping sees all groups.
Weight decay is opt-in by path rule (`optim.wd_mults`), so that a new parameter kind (a
position table, a norm) is never decayed by accident.
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


def decay_multipliers(params, wd_mults) -> object:
  """The weight-decay multiplier of every parameter: the first matching (regex, mult) rule's
  mult, 0 when no rule matches (decay is opt-in)."""
  def mult(path: str) -> float:
    for pattern, m in wd_mults:
      if re.search(pattern, path):
        return float(m)
    return 0.0
  return jax.tree.map(mult, tree_paths(params))


def _adamw(schedule, optim, mults) -> optax.GradientTransformation:
  """optax.adamw with per-parameter decay multipliers: one masked `add_decayed_weights` per
  distinct multiplier (adamw itself is scale_by_adam -> add_decayed_weights -> lr)."""
  values = sorted({m for m in jax.tree.leaves(mults) if m != 0.0})
  decays = [optax.add_decayed_weights(optim.weight_decay * v,
                                      mask=jax.tree.map(lambda m, v=v: m == v, mults))
            for v in values if optim.weight_decay]
  return optax.chain(optax.scale_by_adam(b1=optim.b1, b2=optim.b2), *decays,
                     optax.scale_by_learning_rate(schedule))


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
      transforms[name] = _adamw(scheds[name], optim, decay_multipliers(params, optim.wd_mults))
  tx = optax.multi_transform(transforms, group_labels(params, optim.groups))
  if optim.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
  return tx
