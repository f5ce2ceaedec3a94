"""Predictions over a split and their report; shared by training and `launch/eval.py`."""

from __future__ import annotations

import numpy as np

from medvlmoe_jax import sharding

from medvlmoe_jax.data.pipeline import eval_batches
from medvlmoe_jax.eval import metrics


def predict(eval_fn, params, arrays, batch_size: int, mesh) -> dict[str, np.ndarray]:
  """Runs the jitted eval step over a split; returns probs (N, C), the number of dropped
  routing assignments (a sum over batches) and, if routed per example, expert_index (N, k),
  complete on every process."""
  outputs: dict[str, list] = {}
  rows = sharding.process_rows(mesh, batch_size)
  for local, valid in eval_batches(arrays, batch_size, rows):
    out = sharding.to_host(eval_fn(params, sharding.put_batch(local, mesh)))
    for k, v in out.items():
      v = np.asarray(v)
      outputs.setdefault(k, []).append(v if v.ndim == 0 else v[valid])
  return {k: np.sum(v) if v[0].ndim == 0 else np.concatenate(v) for k, v in outputs.items()}


def report(arrays, probs: np.ndarray, class_names, groups=None, n_boot: int = 1000,
           seed: int = 0, task: str = "multilabel", dataset: str = "") -> dict:
  rep = metrics.classification_report(arrays.labels, probs, class_names,
                                      mask=arrays.label_mask, groups=groups,
                                      n_boot=n_boot, seed=seed)
  if task in ("multiclass", "ordinal"):   # one-hot labels: top-1 accuracy as well
    rep["accuracy"] = float(np.mean(np.argmax(probs, -1) == np.argmax(arrays.labels, -1)))
  if dataset.endswith("mnist"):       # ACC and AUC exactly as medmnist.Evaluator computes them
    from medvlmoe_jax.eval.medmnist_metrics import medmnist_report
    rep.update(medmnist_report(arrays.labels, probs, task, dataset=dataset))
  return rep


def evaluate_split(eval_fn, params, data, split: str, config, mesh) -> tuple[dict, dict]:
  """(report, raw outputs) of one split of a loaded dataset."""
  arrays = data.splits[split]
  out = predict(eval_fn, params, arrays, config.data.eval_batch_size, mesh)
  rep = report(arrays, out["probs"], data.class_names, data.groups.get(split),
               n_boot=config.eval.n_boot, seed=config.eval.seed, task=config.data.task,
               dataset=data.name)
  return rep, out
