"""The paper's Table 2: one config, five variants, one markdown table of test metrics.

Each variant is a set of config overrides (no code forks): the full model, no MoE (one FFN
as wide as the active experts), no fusion (pooled streams concatenated), no text, and
vision only (the ViT with a linear classifier).
"""

from __future__ import annotations

import json
import os

import ml_collections

from medvlmoe_jax.experiment import train_and_evaluate

VARIANTS = {
    "full": {},
    "no MoE": {"model.moe.enabled": False},
    "no fusion": {"model.fusion.enabled": False},
    "no text": {"model.text.enabled": False},
    "vision only": {"model.vision_only": True},
}


def variant_config(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of config with the dotted-key overrides applied (an unknown key is a KeyError)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.lock()                                  # so that an unknown key raises, not adds a field
  c.update_from_flattened_dict(overrides)
  c.unlock()
  return c


def slug(name: str) -> str:
  return name.replace(" ", "_").lower()


def run(config: ml_collections.ConfigDict, root: str, variants=None) -> str:
  """Trains every variant into root/<variant> (resuming finished or partial runs) and
  returns the markdown table, also written to root/ablations.md."""
  rows = {}
  for name in variants or VARIANTS:
    workdir = os.path.join(root, slug(name))
    done = os.path.join(workdir, "test_metrics.json")
    if os.path.exists(done):
      with open(done) as f:
        rows[name] = json.load(f)
    else:
      rows[name] = train_and_evaluate(variant_config(config, VARIANTS[name]), workdir)
  table = markdown(rows)
  with open(os.path.join(root, "ablations.md"), "w") as f:
    f.write(table + "\n")
  return table


def markdown(rows: dict[str, dict]) -> str:
  full = rows.get("full")
  has_acc = any(r.get("accuracy") is not None for r in rows.values())
  head = "| variant | test mean AUC | 95% CI | Δ AUC vs full |" + (" ACC | Δ ACC |" if has_acc else "")
  sep = "|---|---|---|---|" + ("---|---|" if has_acc else "")
  lines = [head, sep]
  for name, r in rows.items():
    lo, hi = r["mean_auc_ci95"]
    delta = "" if full is None or name == "full" else f"{r['mean_auc'] - full['mean_auc']:+.4f}"
    line = f"| {name} | {r['mean_auc']:.4f} | [{lo:.4f}, {hi:.4f}] | {delta} |"
    if has_acc:
      dacc = "" if full is None or name == "full" else f"{r['accuracy'] - full['accuracy']:+.4f}"
      line += f" {r['accuracy']:.4f} | {dacc} |"
    lines.append(line)
  return "\n".join(lines)
