"""`train_and_evaluate(config, workdir)`: the whole run, resumable at any checkpoint.

config -> data -> model -> optimizer -> jitted step -> loop (log, validate, early-stop,
checkpoint) -> best checkpoint -> test report. The top of the package: it joins training
(`train.trainer`) and evaluation (`eval.evaluate`), which do not import each other.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from medvlmoe_jax.eval import evaluate
from medvlmoe_jax.eval import metrics as metrics_lib
from medvlmoe_jax.train import trainer as trainer_lib
from medvlmoe_jax.train.checkpointing import Checkpointer
from medvlmoe_jax.train.metric_writer import MetricWriter
from medvlmoe_jax.train.step import jit_eval_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  exp = trainer_lib.create_experiment(config)
  main_process = jax.process_index() == 0
  if main_process:
    trainer_lib.save_config(config, workdir)
  trainer_lib.write_summary(exp, workdir)
  eval_fn = jit_eval_step(exp.graphdef, exp.task, exp.mesh, exp.state_shardings.params)

  def validate(params):
    rep, _ = evaluate.evaluate_split(eval_fn, params, exp.data, "val", config, exp.mesh)
    return rep["mean_auc"]

  writer = MetricWriter(workdir) if main_process else None
  record = trainer_lib.train(exp, workdir, validate, writer)
  best = record["best_step"]
  if best is None:
    raise RuntimeError("training ended without an evaluation; nothing to test")
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    params = ckpt.restore_params(best, exp.state.params, exp.state_shardings.params)
  finally:
    ckpt.close()
  rep, _ = evaluate.evaluate_split(eval_fn, params, exp.data, "test", config, exp.mesh)
  rep.update(split="test", checkpoint_step=best)
  if writer:
    with open(os.path.join(workdir, "test_metrics.json"), "w") as f:
      json.dump(rep, f, indent=2)
    writer.write(record["last_step"], {"test_mean_auc": rep["mean_auc"]}, split="test",
                 checkpoint_step=best)
    print(metrics_lib.format_table(rep))
    writer.close()
  return rep
