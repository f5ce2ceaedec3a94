"""The train state and the two jitted steps (train, eval) as pure functions of it.

`task` is the data's task name, or for a mixture the model's heads ((task, classes), ...):
a static argument either way (`losses.loss`, `losses.probabilities`)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from medvlmoe_jax import sharding
from medvlmoe_jax.train import contrastive, losses
from medvlmoe_jax.train.loss_scale import DynamicLossScale, all_finite


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any                          # nnx.State of the model's nnx.Param variables
  opt_state: Any
  loss_scale: DynamicLossScale | None = None


def forward(graphdef, params, batch):
  model = nnx.merge(graphdef, params)
  return model(batch["image"], batch.get("input_ids"), batch.get("attention_mask"),
               valid=batch.get("valid"), modality=batch.get("modality"))


def loss_fn(params, graphdef, batch, task, scale, align_weight: float = 0.0):
  logits, aux = forward(graphdef, params, batch)
  cls = losses.loss(logits, batch, task)
  balance = aux.get("load_balance_loss", jnp.zeros((), jnp.float32))
  total = cls + balance
  stats = {"classification_loss": cls, "load_balance_loss": balance,
           "dropped_tokens": aux.get("dropped_tokens", jnp.zeros((), jnp.int32))}
  if align_weight:   # over the global batch: the jitted step sees every device's rows
    align = contrastive.info_nce(aux["image_embedding"], aux["text_embedding"],
                                 aux["log_scale"], batch.get("valid"))
    total = total + align_weight * align
    stats.update(align_loss=align, align_scale=jnp.exp(aux["log_scale"]))
  if "expert_share" in aux:    # (K,) share of the assignments each expert got: expert load
    stats["expert_share"] = aux["expert_share"]
  if "expert_share_by_scale" in aux:   # (S, K): the same per visual scale (feature_layers)
    stats["expert_share_by_scale"] = aux["expert_share_by_scale"]
  return total * scale, (total, stats)


def train_step(state: TrainState, batch, *, graphdef, tx: optax.GradientTransformation,
               task, schedules: dict, align_weight: float = 0.0):
  scale = state.loss_scale.scale if state.loss_scale is not None else jnp.float32(1.0)
  grad_fn = jax.grad(loss_fn, has_aux=True)
  grads, (loss, stats) = grad_fn(state.params, graphdef, batch, task, scale, align_weight)
  grads = jax.tree.map(lambda g: g / scale, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss_scale = state.loss_scale
  if loss_scale is not None:   # float16: skip a step whose gradients overflowed
    finite = all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    loss_scale = loss_scale.update(finite)
    stats["loss_scale"] = loss_scale.scale
  metrics = dict(stats, loss=loss, grad_norm=optax.global_norm(grads),
                 **{f"lr_{k}": s(state.step) for k, s in schedules.items()})
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            loss_scale=loss_scale)
  return new_state, metrics


def eval_step(params, batch, *, graphdef, task):
  """Probabilities plus routing decisions, for metrics and the routing heatmap. Rows with
  batch['valid'] False (padding) take no part in routing."""
  logits, aux = forward(graphdef, params, batch)
  out = {"probs": losses.probabilities(logits, task),
         "dropped_tokens": aux.get("dropped_tokens", jnp.zeros((), jnp.int32))}
  if "expert_index" in aux and aux["expert_index"].shape[0] == logits.shape[0]:
    out["expert_index"] = aux["expert_index"]
  for key in ("image_embedding", "text_embedding"):   # model.align: for retrieval metrics
    if key in aux:
      out[key] = aux[key]
  return out


def _under_mesh(fn, mesh):
  """Traced under the mesh, so that the MoE layer dispatches with shard_map when the mesh
  has several devices."""
  @functools.wraps(fn)
  def call(*args):
    with jax.set_mesh(mesh):
      return fn(*args)
  return call


def jit_train_step(graphdef, tx, task, schedules, mesh, state_shardings,
                   align_weight: float = 0.0):
  """The state keeps its shardings across steps (and is donated); batches arrive split over
  ('data', 'expert')."""
  fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, task=task,
                                 schedules=schedules, align_weight=align_weight),
               in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
               out_shardings=(state_shardings, None), donate_argnums=0)
  return _under_mesh(fn, mesh)


def jit_eval_step(graphdef, task, mesh, param_shardings):
  """Output shardings are left to XLA: per-example outputs follow the batch, the dropped
  count (a scalar) is replicated."""
  fn = jax.jit(functools.partial(eval_step, graphdef=graphdef, task=task),
               in_shardings=(param_shardings, sharding.batch_sharding(mesh)))
  return _under_mesh(fn, mesh)
