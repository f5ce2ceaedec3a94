"""Evaluate a training workdir: restore a checkpoint, predict a split, write a report."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from medvlmoe_jax import sharding
from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.eval import evaluate
from medvlmoe_jax.eval import metrics as metrics_lib
from medvlmoe_jax.models.medvlmoe import abstract_model
from medvlmoe_jax.train.checkpointing import Checkpointer
from medvlmoe_jax.train.metric_writer import MetricWriter, read_metrics
from medvlmoe_jax.train.step import jit_eval_step


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise BadInputError(f"{path}: not a readable config ({e})") from None


def resolve_step(ckpt: Checkpointer, which: str) -> int:
  """'latest', 'best' (best validation mean AUC) or a step number."""
  if which not in ("latest", "best") and not which.isdigit():
    raise BadInputError(f"--checkpoint must be best, latest or a step number, not {which!r}")
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
  return int(which)


def write_figures(workdir: str, out_dir: str, arrays, out: dict, class_names, config,
                  step: int, split: str) -> None:
  """ROC curves; the expert-routing heatmap (share of each class's examples sent to each
  expert, the paper's Figure 3) when routing is per example; expert load over training. Each
  is a PNG in `out_dir` and an image in the workdir's TensorBoard events (tag SPLIT/NAME)."""
  from medvlmoe_jax.eval import figures
  written: dict = {}
  figures.roc_curves(arrays.labels, out["probs"], class_names, os.path.join(out_dir, "roc.png"),
                     label_mask=arrays.label_mask, written=written)
  if "expert_index" in out:
    figures.routing_heatmap(arrays.labels, out["expert_index"], class_names,
                            config.model.moe.num_experts, os.path.join(out_dir, "routing_heatmap.png"),
                            os.path.join(out_dir, "routing_heatmap.csv"), written=written)
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    figures.expert_load(read_metrics(workdir), os.path.join(out_dir, "expert_load.png"),
                        written=written)
  writer = MetricWriter(workdir)
  writer.write_figures(step, {f"{split}/{name}": path for name, path in written.items()})
  writer.close()


def routing_by_group(data, split: str, outs: dict, config, out_dir: str) -> dict:
  """For a mixture routed per example: each modality's and each dataset's share of its
  assignments per expert (heatmaps), and the specialisation score, the normalised mutual
  information between modality (dataset) and expert (`eval/specialisation.py`)."""
  from medvlmoe_jax.eval import figures, specialisation
  parts = [(d, p) for d, p in enumerate(data.parts)
           if p.name in outs and "expert_index" in outs[p.name]]
  if not parts:
    return {}
  index = np.concatenate([outs[p.name]["expert_index"] for _, p in parts])
  dataset = np.concatenate([np.full(len(outs[p.name]["expert_index"]), d) for d, p in parts])
  modality = np.asarray(data.modality)[dataset]
  num_experts, result = config.model.moe.num_experts, {}
  for key, groups, names in (("modality", modality, data.modality_names),
                             ("dataset", dataset, data.names)):
    share = specialisation.group_expert_share(index, groups, num_experts,
                                              num_groups=len(names))
    score = specialisation.specialisation_score(index, groups, num_experts)
    figures.routing_heatmap_by_group(
        share, names, os.path.join(out_dir, f"routing_by_{key}.png"), group_label=key,
        n_examples=np.bincount(groups, minlength=len(names)), score=score)
    result[f"expert_share_by_{key}"] = {n: row.tolist() for n, row in zip(names, share)}
    result[f"specialisation_{key}"] = None if np.isnan(score) else score
  return result


def evaluate_workdir(workdir: str, split: str = "test", checkpoint: str = "best",
                     out_dir: str | None = None) -> dict:
  """Restores only the parameters of one checkpoint (onto the run's mesh) and evaluates a
  split: no optimizer state is built and no converted encoder is re-read."""
  config = load_config(workdir)
  mesh = sharding.make_mesh(config.mesh, config.model.moe.num_experts)
  sharding.check_batch(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  data = pipeline.load_dataset(config)
  parts = data.parts if isinstance(data, pipeline.Mixture) else [data]
  have = sorted({s for p in parts for s in p.splits})
  if split not in have:
    raise BadInputError(f"unknown split {split!r}; have {have}")
  _, graphdef, abstract = abstract_model(config.model, config.seed)
  shardings = sharding.tree_shardings(mesh, abstract)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    step = resolve_step(ckpt, checkpoint)
    params = ckpt.restore_params(step, abstract, shardings)
  finally:
    ckpt.close()
  eval_fn = jit_eval_step(graphdef, pipeline.step_task(data, config), mesh, shardings)
  rep, out = evaluate.evaluate_split(eval_fn, params, data, split, config, mesh)
  rep.update(split=split, checkpoint_step=step)
  out_dir = out_dir or os.path.join(workdir, "eval", f"{split}_step{step}")
  os.makedirs(out_dir, exist_ok=True)
  if isinstance(data, pipeline.Mixture):
    rep.update(routing_by_group(data, split, out, config, out_dir))
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(rep, f, indent=2)
  outs = out if isinstance(data, pipeline.Mixture) else {"": out}
  for part in parts:
    if part.name not in outs and len(parts) > 1:
      continue
    key = part.name if len(parts) > 1 else ""
    arrays, part_dir = part.splits[split], os.path.join(out_dir, key)
    os.makedirs(part_dir, exist_ok=True)
    np.savez(os.path.join(part_dir, "predictions.npz"), labels=arrays.labels,
             label_mask=arrays.label_mask, **outs[key])
    write_figures(workdir, part_dir, arrays, outs[key], part.class_names, config, step,
                  f"{split}/{key}" if key else split)
  rep["table"] = metrics_lib.format_table(rep)
  rep["out_dir"] = out_dir
  return rep


def aggregate(reports: list[dict]) -> dict:
  """Mean and (sample) standard deviation over runs (seeds) of every scalar metric and of
  each class's AUC."""
  def stats(values):
    values = [v for v in values if v is not None]
    if not values:
      return None
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
  scalars = sorted({k for r in reports for k, v in r.items() if isinstance(v, (int, float))
                    and k not in ("checkpoint_step", "num_examples", "n_boot", "num_classes_scored")})
  out = {k: stats([r.get(k) for r in reports]) for k in scalars}
  classes = list(reports[0]["per_class_auc"])
  out["per_class_auc"] = {c: stats([r["per_class_auc"].get(c) for r in reports]) for c in classes}
  out["runs"] = len(reports)
  return out


def format_aggregate(agg: dict) -> str:
  lines = [f"over {agg['runs']} runs (mean ± std):"]
  for k, v in agg.items():
    if isinstance(v, dict) and "mean" in v:
      lines.append(f"  {k:<16} {v['mean']:.4f} ± {v['std']:.4f}")
  return "\n".join(lines)
