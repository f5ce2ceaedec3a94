"""Predictions over a split and their report; shared by training and `launch/eval.py`."""

from __future__ import annotations

import numpy as np

from medvlmoe_jax import sharding

from medvlmoe_jax.data.pipeline import Mixture, eval_batches
from medvlmoe_jax.eval import metrics


def predict(eval_fn, params, arrays, batch_size: int, mesh,
            constants: dict[str, int] | None = None) -> dict[str, np.ndarray]:
  """Runs the jitted eval step over a split; returns probs (N, C), the number of dropped
  routing assignments (a sum over batches) and, if routed per example, expert_index (N, k),
  complete on every process."""
  outputs: dict[str, list] = {}
  rows = sharding.process_rows(mesh, batch_size)
  for local, valid in eval_batches(arrays, batch_size, rows, constants):
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


def evaluate_mixture(eval_fn, params, mixture, split: str, config, mesh) -> tuple[dict, dict]:
  """Each dataset of a mixture reported exactly as a run on it alone would be (its own head,
  task, classes, metrics), and `mean_auc` / `mean_accuracy` over the datasets: what the best
  checkpoint is chosen by. Raw outputs per dataset, probabilities of its own head only."""
  reports, outs = {}, {}
  bounds = np.cumsum([0] + [len(p.class_names) for p in mixture.parts])
  for d, part in enumerate(mixture.parts):
    if split not in part.splits:
      continue
    arrays = part.splits[split]
    out = predict(eval_fn, params, arrays, config.data.eval_batch_size, mesh,
                  {"dataset": d, "modality": mixture.modality[d]})
    out["probs"] = out["probs"][:, bounds[d]:bounds[d + 1]]
    reports[part.name] = report(arrays, out["probs"], part.class_names, part.groups.get(split),
                                n_boot=config.eval.n_boot, seed=config.eval.seed,
                                task=part.task, dataset=part.name)
    if (recall := retrieval_report(out, arrays)) is not None:
      reports[part.name]["retrieval"] = recall
    outs[part.name] = out
  rep = {"datasets": reports, "mean_auc": _mean([r.get("mean_auc") for r in reports.values()])}
  accuracy = [r["accuracy"] for r in reports.values() if "accuracy" in r]
  if accuracy:
    rep["mean_accuracy"] = float(np.mean(accuracy))
  return rep, outs


def retrieval_report(out: dict, arrays) -> dict | None:
  """Image <-> text Recall@1/5/10 of the aligned embeddings (model.align), for a split whose
  examples carry their own text; examples that share one sentence count as each other's
  match (`retrieval.recall_at_k`'s text keys), and the chance level is reported beside."""
  texts = getattr(arrays, "texts", None)
  if "image_embedding" not in out or texts is None or len(set(texts)) < 2:
    return None
  from medvlmoe_jax.eval import retrieval
  rep = retrieval.recall_at_k(out["image_embedding"], out["text_embedding"], text_keys=texts)
  _, counts = np.unique(np.asarray(texts), return_counts=True)
  # Chance: image -> text ranks the distinct texts, one of which is right; text -> image
  # finds one of a query's m images first with probability m / N.
  rep["image_to_text_chance_R@1"] = 1.0 / len(counts)
  rep["text_to_image_chance_R@1"] = float(np.sum(counts ** 2) / len(texts) ** 2)
  rep["distinct_texts"] = int(len(counts))
  return rep


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def evaluate_split(eval_fn, params, data, split: str, config, mesh) -> tuple[dict, dict]:
  """(report, raw outputs) of one split of a loaded dataset (or of every dataset of a
  mixture, see `evaluate_mixture`)."""
  if isinstance(data, Mixture):
    return evaluate_mixture(eval_fn, params, data, split, config, mesh)
  arrays = data.splits[split]
  out = predict(eval_fn, params, arrays, config.data.eval_batch_size, mesh)
  rep = report(arrays, out["probs"], data.class_names, data.groups.get(split),
               n_boot=config.eval.n_boot, seed=config.eval.seed, task=config.data.task,
               dataset=data.name)
  if (recall := retrieval_report(out, arrays)) is not None:
    rep["retrieval"] = recall
  return rep, out
