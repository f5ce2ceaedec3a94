"""The training run: `create_experiment(config)` builds it, `train(exp, workdir, validate)`
runs the loop (log, validate, early-stop, checkpoint), resumable at any checkpoint.

How a validation score is computed is the caller's (`medvlmoe_jax.experiment` passes the
evaluation's mean AUC), so that training never imports evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from medvlmoe_jax import config as config_lib
from medvlmoe_jax import platform, sharding
from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import mixture as mixture_lib
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.models.medvlmoe import abstract_model, build_model
from medvlmoe_jax.models.pretrained import model_parts, overwrite, pretrained_params
from medvlmoe_jax.train import optimizer as optim_lib
from medvlmoe_jax.train.checkpointing import BEST_METRIC, Checkpointer
from medvlmoe_jax.train.loss_scale import DynamicLossScale
from medvlmoe_jax.train.metric_writer import MetricWriter
from medvlmoe_jax.train.step import TrainState, jit_eval_step, jit_train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Experiment:
  """Everything a training run needs, built from the config alone."""
  config: ml_collections.ConfigDict
  data: pipeline.Dataset
  graphdef: object
  state: TrainState
  tx: object
  schedules: dict
  steps_per_epoch: int
  total_steps: int
  param_counts: dict
  mesh: jax.sharding.Mesh
  state_shardings: object

  @property
  def task(self):
    """data.task, or a mixture's heads ((task, classes), ...): what the steps take."""
    return pipeline.step_task(self.data, self.config)

  def jitted(self):
    """(train step, eval step), compiled for the mesh."""
    return (jit_train_step(self.graphdef, self.tx, self.task, self.schedules, self.mesh,
                           self.state_shardings, self.config.train.align_weight),
            jit_eval_step(self.graphdef, self.task, self.mesh, self.state_shardings.params))


def _set_heads(config: ml_collections.ConfigDict, data: pipeline.Mixture) -> None:
  """A mixture's model has a head per dataset and an id per modality: set from the data
  (and saved with the config), or checked where the config gives them."""
  heads = tuple(c for _, c in data.heads)
  given = tuple(config.model.heads)
  if given and given != heads:
    raise config_lib.ConfigError(f"model.heads={given} but the mixture's datasets "
                                 f"{data.names} have {heads} classes")
  if config.model.num_modalities not in (1, len(data.modality_names)):
    raise config_lib.ConfigError(f"model.num_modalities={config.model.num_modalities} but the "
                                 f"mixture has {len(data.modality_names)} {data.modality_names}")
  config.model.heads = heads
  config.model.num_modalities = len(data.modality_names)


def train_examples(data) -> int:
  if isinstance(data, pipeline.Mixture):
    return data.num_examples("train")
  return len(data.splits["train"])


def make_train_iterator(data, config, mesh):
  """Grain's iterator over the training batches (of one dataset, or mixed by weight)."""
  c = config.data
  kwargs = dict(worker_count=c.worker_count, rows=sharding.process_rows(mesh, c.batch_size),
                augment_cfg=c.augment)
  if isinstance(data, pipeline.Mixture):
    return mixture_lib.mixed_train_iterator([p.splits["train"] for p in data.parts],
                                            data.weights, c.batch_size, config.seed,
                                            names=data.names, **kwargs)
  return pipeline.train_iterator(data.splits["train"], c.batch_size, seed=config.seed, **kwargs)


def host_batch(data, batch: dict) -> dict:
  """A mixture's rows carry their modality id, from the dataset they came from."""
  if isinstance(data, pipeline.Mixture):
    batch["modality"] = np.asarray(data.modality, np.int32)[batch["dataset"]]
  return batch


def init_state(config: ml_collections.ConfigDict, tx, mesh, pretrained: dict | None = None):
  """(train state, its shardings). The state is made by one jitted function whose outputs
  are placed by `out_shardings`: every parameter and optimizer moment is created on the
  devices that hold it (each device computes its own expert shard), with no host copy and
  no `device_put` of a finished state. `pretrained` ({path: array}, converted encoders) is
  an argument of that function, so the loaded weights are copied once, to their devices."""
  pretrained = pretrained or {}
  loss_scale = config.optim.loss_scale

  def init(pretrained):
    _, params = nnx.split(build_model(config.model, seed=config.seed), nnx.Param)
    if pretrained:
      params = overwrite(params, pretrained, what=config.model.init_from)
    scale = None
    if config.model.dtype == "float16":
      scale = DynamicLossScale.create(loss_scale.initial, loss_scale.growth_interval)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      loss_scale=scale)

  shardings = sharding.tree_shardings(mesh, jax.eval_shape(init, pretrained))
  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)(pretrained)
  return state, shardings


def create_experiment(config: ml_collections.ConfigDict, devices=None) -> Experiment:
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh, config.model.moe.num_experts, devices)
  sharding.check_batch(config.data.batch_size, mesh, "data.batch_size")
  sharding.check_batch(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  data = pipeline.load_dataset(config)
  if isinstance(data, pipeline.Mixture):
    _set_heads(config, data)
  elif len(data.splits["train"]) < config.data.batch_size:
    where = config.data.path if config.data.name == "tfds" else f"data.name={config.data.name!r}"
    raise BadInputError(f"{where}: the train split has {len(data.splits['train'])} examples, "
                        f"fewer than one batch (data.batch_size={config.data.batch_size})")
  if config.model.text.enabled and data.vocab_size > config.model.text.vocab_size:
    raise config_lib.ConfigError(f"the tokenizer has {data.vocab_size} tokens but "
                                 f"model.text.vocab_size={config.model.text.vocab_size}")
  model, graphdef, abstract = abstract_model(config.model, config.seed)
  counts = {name: sum(x.size for x in jax.tree.leaves(sub)) for name, sub in abstract.items()}
  steps_per_epoch = max(train_examples(data) // config.data.batch_size, 1)
  total = max(int(round(config.train.epochs * steps_per_epoch)), 1)
  if config.train.max_steps is not None:
    total = min(total, config.train.max_steps)
  schedules = optim_lib.schedules(config.optim, steps_per_epoch, config.train.epochs,
                                  config.train.warmup_epochs)
  tx = optim_lib.make_optimizer(config.optim, abstract, schedules)
  pretrained = None
  if config.model.init_from:
    pretrained = pretrained_params(config.model.init_from, config.model, model_parts(model))
    log.info("encoders %s initialised from %s", sorted({k.split("/")[0] for k in pretrained}),
             config.model.init_from)
  state, shardings = init_state(config, tx, mesh, pretrained)
  return Experiment(config, data, graphdef, state, tx, schedules, steps_per_epoch, total, counts,
                    mesh, shardings)


def _check_finite(rows: list[dict], last_good: int | None):
  for row in rows:
    if not math.isfinite(float(row["loss"])):
      raise NonFiniteLossError(
          f"non-finite loss ({float(row['loss'])}) at step {row['step']}; stopping. The last good "
          f"checkpoint (step {last_good}) was not overwritten.")


def save_config(config: ml_collections.ConfigDict, workdir: str):
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def write_summary(exp: Experiment, workdir: str) -> dict:
  c = exp.config
  summary = dict(sharding.describe(exp.mesh, exp.state.params),
                 parameters=exp.param_counts, total_parameters=sum(exp.param_counts.values()),
                 platform=platform.resolve(c.model, exp.mesh, c.data.batch_size,
                                           c.data.text_max_len))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"mesh {summary['mesh']} over {summary['num_devices']} devices "
          f"({summary['process_count']} processes); parameters {summary['total_parameters']:,}")
    for path, shard in summary["expert_shards"].items():
      print(f"  {path}: global {shard['global']} -> per device {shard['per_device']}")
    choices = summary["platform"]
    attention = ", ".join(f"{site} {impl}" for site, impl in choices["attention"].items())
    print(f"compiled for {choices['target']['num_devices']}x {choices['target']['device_kind']} "
          f"({choices['target']['platform']}): attention {attention}; "
          f"MoE dispatch {choices['moe_dispatch']}")
  return summary


def train(exp: Experiment, workdir: str, validate: Callable[[object], float | None],
          writer: MetricWriter | None = None) -> dict:
  """The loop; `validate(params)` gives the validation mean AUC that early stopping and the
  best checkpoint go by. Returns the trainer record (best_step, best_auc, ...).

  Between log steps nothing is read back from the devices (tests/test_host_transfers.py), so
  the host dispatches step after step without waiting for any: the metrics stay on the
  devices until a log or evaluation step fetches them all at once."""
  config = exp.config
  train_fn, _ = exp.jitted()
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
  train_iter = make_train_iterator(exp.data, config, exp.mesh)
  state = exp.state
  trainer = {"best_auc": None, "best_step": None, "bad_evals": 0, "stopped": False}
  start = ckpt.latest_step()
  if start is not None:
    state, data_state, trainer = ckpt.restore(start, state)
    train_iter.set_state(data_state)
    log.info("resumed from checkpoint step %d", start)
  eval_every = max(1, int(round(config.train.eval_every_epochs * exp.steps_per_epoch)))
  log_every = max(1, config.train.log_every_steps)
  step = int(state.step)
  pending: list[tuple[int, dict]] = []
  t0, n0 = time.time(), step

  bar = tqdm(total=exp.total_steps, initial=step,
             disable=not (jax.process_index() == 0 and sys.stderr.isatty()),
             desc="train", dynamic_ncols=True)
  while step < exp.total_steps and not trainer["stopped"]:
    batch = sharding.put_batch(host_batch(exp.data, next(train_iter)), exp.mesh)
    state, m = train_fn(state, batch)
    step += 1
    pending.append((step, m))
    bar.update(1)
    is_eval = step % eval_every == 0 or step == exp.total_steps
    # Metrics come to the host only here: every log_every steps and at every evaluation step,
    # which writes a checkpoint after the losses are checked, so none holds an unchecked state.
    if step % log_every == 0 or is_eval:
      host = jax.device_get(pending)
      rows = [dict({k: np.asarray(v, np.float64) for k, v in mm.items()}, step=s) for s, mm in host]
      _check_finite(rows, ckpt.latest_step())
      mean = {k: np.mean([r[k] for r in rows], axis=0) for k in rows[-1] if k != "step"}
      rate = (step - n0) * config.data.batch_size / max(time.time() - t0, 1e-9)
      if writer:
        writer.write(step, mean, split="train", examples_per_sec=rate)
      bar.set_postfix(loss=f"{mean['loss']:.4f}")
      log.info("step %d/%d loss %.4f (cls %.4f, balance %.4f) %.1f ex/s", step,
               exp.total_steps, mean["loss"], mean["classification_loss"],
               mean["load_balance_loss"], rate)
      pending, t0, n0 = [], time.time(), step
    if is_eval:
      auc = validate(state.params)
      if writer:
        writer.write(step, {BEST_METRIC: auc}, split="val")
      log.info("step %d val mean AUC %s", step, "n/a" if auc is None else f"{auc:.4f}")
      if auc is not None and (trainer["best_auc"] is None or auc > trainer["best_auc"]):
        trainer.update(best_auc=auc, best_step=step, bad_evals=0)
      else:
        trainer["bad_evals"] += 1
        if trainer["bad_evals"] >= config.train.patience:
          trainer["stopped"] = True
          log.info("early stopping: no better val mean AUC for %d evaluations",
                   config.train.patience)
      ckpt.save(step, state, train_iter.get_state(), trainer, metrics={BEST_METRIC: auc})
  bar.close()
  ckpt.close()
  trainer["last_step"] = step
  return trainer
