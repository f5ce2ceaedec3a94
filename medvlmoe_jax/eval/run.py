"""Evaluate a training workdir: restore a checkpoint, predict a split, write a report."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from medvlmoe_jax.eval import metrics as metrics_lib
from medvlmoe_jax.train.checkpointing import Checkpointer


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def resolve_step(ckpt: Checkpointer, which: str) -> int:
  """'latest', 'best' (best validation mean AUC) or a step number."""
  latest = ckpt.latest_step()
  if latest is None:
    raise FileNotFoundError(f"no checkpoints in {ckpt.directory}")
  if which == "latest":
    return latest
  if which == "best":
    best = ckpt.read_trainer(latest)["best_step"]
    if best is None:
      raise FileNotFoundError(f"{ckpt.directory}: no evaluated checkpoint to call best")
    return int(best)
  try:
    return int(which)
  except ValueError:
    raise ValueError(f"--checkpoint must be best, latest or a step number, not {which!r}") from None


def evaluate_workdir(workdir: str, split: str = "test", checkpoint: str = "best",
                     out_dir: str | None = None) -> dict:
  from medvlmoe_jax.eval import evaluate
  from medvlmoe_jax.train.trainer import create_experiment

  config = load_config(workdir)
  exp = create_experiment(config)
  if split not in exp.data.splits:
    raise ValueError(f"unknown split {split!r}; have {sorted(exp.data.splits)}")
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  step = resolve_step(ckpt, checkpoint)
  state, _, _ = ckpt.restore(step, exp.state)
  _, eval_fn = exp.jitted()
  arrays = exp.data.splits[split]
  out = evaluate.predict(eval_fn, state.params, arrays, config.data.eval_batch_size, exp.mesh)
  rep = evaluate.report(arrays, out["probs"], exp.data.class_names, exp.data.groups.get(split),
                        n_boot=config.eval.n_boot, seed=config.eval.seed,
                        task=config.data.task)
  rep.update(split=split, checkpoint_step=step)
  out_dir = out_dir or os.path.join(workdir, "eval", f"{split}_step{step}")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(rep, f, indent=2)
  np.savez(os.path.join(out_dir, "predictions.npz"), labels=arrays.labels,
           label_mask=arrays.label_mask, **out)
  rep["table"] = metrics_lib.format_table(rep)
  rep["out_dir"] = out_dir
  return rep
