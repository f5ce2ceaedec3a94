"""Report figures: per-class ROC curves, class-to-expert routing (the paper's
Figure 3), expert load over training and routing by group (modality / dataset).

Matplotlib's Agg backend is selected before pyplot is imported so that figures
can be written on headless training hosts.

Each function takes an optional ``written`` dict and, once its PNG is saved, sets
``written[name] = png_path`` (name: "roc", "routing_heatmap", "expert_load",
"routing_by_group"); a figure that is not written (expert_load without data) adds nothing.
Hand the PNGs to TensorBoard with
``MetricWriter.write_figures(step, {f"{split}/{name}": path for name, path in written.items()})``.
"""

from __future__ import annotations

import csv
import logging
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: str, written: dict | None, name: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)
  if written is not None:
    written[name] = path


def roc_curves(labels, probs, class_names, path: str, label_mask=None, *,
               written: dict | None = None) -> dict[str, float]:
  """One ROC curve per class on a single plot; returns {class name: AUC} of the plotted ones.

  Entries with ``label_mask`` False (e.g. uncertain labels) are left out of
  that class's curve. Classes whose (masked) labels have a single outcome have
  no ROC curve: they are skipped and named in the figure's footnote.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if labels.ndim != 2 or labels.shape != probs.shape:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be (N, C)")
  if len(class_names) != labels.shape[1]:
    raise ValueError(f"{len(class_names)} class names for {labels.shape[1]} classes")
  mask = np.ones(labels.shape, bool) if label_mask is None else np.asarray(label_mask, bool)
  aucs, skipped = {}, []
  fig, ax = plt.subplots(figsize=(7, 6.5))
  cmap = plt.get_cmap("tab20" if labels.shape[1] > 10 else "tab10")
  for c, name in enumerate(class_names):
    y = labels[mask[:, c], c] == 1
    s = probs[mask[:, c], c]
    if y.all() or not y.any():
      skipped.append(str(name))
      continue
    fpr, tpr, _ = roc_curve(y, s)
    aucs[str(name)] = float(roc_auc_score(y, s))
    ax.plot(fpr, tpr, lw=1.5, color=cmap(c % cmap.N),
            label=f"{name} (AUC {aucs[str(name)]:.3f}, n+={int(y.sum())})")
  ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
         ylabel="True positive rate (sensitivity)", aspect="equal")
  mean = f", mean AUC {np.mean(list(aucs.values())):.3f}" if aucs else ""
  ax.set_title(f"ROC per class{mean}")
  ax.legend(loc="lower right", fontsize=7)
  if skipped:
    fig.text(0.01, 0.005, "no ROC (single outcome): " + ", ".join(skipped), fontsize=7)
  _save(fig, path, written, "roc")
  return aucs


def routing_heatmap(labels, expert_index, class_names, num_experts: int, png_path: str,
                    csv_path: str, *, written: dict | None = None) -> np.ndarray:
  """Share of each class's top-k expert assignments that go to each expert.

  Cell (c, e) = (number of (example, slot) pairs with ``expert_index[n, j] ==
  e`` over examples n with ``labels[n, c] == 1``) / (k x number of such
  examples). Each example counts once per chosen expert, and each row is
  normalised to sum to 1 over experts, so uniform routing reads 1/K in every
  cell; multiplied by k, a cell is the fraction of the class's positive
  examples whose top-k includes expert e (top-k experts are distinct). Rows
  follow ``class_names``, then a last row "all" over every example; a class
  without positives is a row of NaN. Returns that (C + 1, K) matrix and writes
  it as CSV (class, expert_0..expert_{K-1}, n_examples) and as an annotated
  PNG heatmap.
  """
  labels = np.asarray(labels)
  idx = np.asarray(expert_index)
  if idx.ndim == 1:
    idx = idx[:, None]
  if labels.ndim != 2 or idx.ndim != 2 or labels.shape[0] != idx.shape[0]:
    raise ValueError(f"labels {labels.shape} must be (N, C) and expert_index {idx.shape} (N, k)")
  if len(class_names) != labels.shape[1]:
    raise ValueError(f"{len(class_names)} class names for {labels.shape[1]} classes")
  if idx.size and (idx.min() < 0 or idx.max() >= num_experts):
    raise ValueError(f"expert_index outside 0..{num_experts - 1}")
  k = idx.shape[1]
  # counts[n, e]: how many of example n's k slots chose expert e.
  counts = np.zeros((idx.shape[0], num_experts), np.float64)
  np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
  members = np.concatenate([labels == 1, np.ones((labels.shape[0], 1), bool)], axis=1)  # (N, C+1)
  n_examples = members.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    matrix = (members.T.astype(np.float64) @ counts) / (k * n_examples[:, None])
  names = [str(n) for n in class_names] + ["all"]

  os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["class"] + [f"expert_{e}" for e in range(num_experts)] + ["n_examples"])
    for name, row, n in zip(names, matrix, n_examples):
      w.writerow([name] + [repr(float(v)) for v in row] + [int(n)])

  rows = len(names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.75 * num_experts, 1.2 + 0.38 * rows))
  im = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0.0,
                 vmax=max(np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0, 1e-9))
  ax.axhline(rows - 1.5, color="white", lw=2)  # sets the "all" row apart
  vmax = im.get_clim()[1]
  for r in range(rows):
    for e in range(num_experts):
      v = matrix[r, e]
      if np.isnan(v):   # no positives: the cell is blank, say so
        ax.text(e, r, "n/a", ha="center", va="center", fontsize=7, color="grey")
        continue
      ax.text(e, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
              color="black" if v > 0.6 * vmax else "white")
  ax.set_xticks(range(num_experts), [f"E{e}" for e in range(num_experts)])
  ax.set_yticks(range(rows), [f"{n} (n={int(c)})" for n, c in zip(names, n_examples)], fontsize=8)
  ax.set_xlabel("expert")
  ax.set_ylabel("class (positive examples)")
  ax.set_title(f"Share of each class's top-{k} assignments per expert (uniform = {1 / num_experts:.3g})",
               fontsize=9)
  fig.colorbar(im, ax=ax, label="share of assignments")
  _save(fig, png_path, written, "routing_heatmap")
  return matrix


def expert_load(metrics_rows, png_path: str, *, written: dict | None = None) -> None:
  """Expert load (share of routing assignments per expert) against training step.

  ``metrics_rows`` are parsed ``metrics.jsonl`` rows; only rows with
  ``split == "train"`` and an ``expert_share`` list are used. Logs a warning
  and writes nothing when there are none (e.g. a model without MoE).
  """
  rows = [r for r in metrics_rows if r.get("split") == "train" and r.get("expert_share") is not None]
  if not rows:
    log.warning("expert_load: no train rows with 'expert_share' in the metrics; %s not written",
                png_path)
    return
  rows.sort(key=lambda r: r["step"])
  steps = np.array([r["step"] for r in rows])
  share = np.array([r["expert_share"] for r in rows], dtype=np.float64)
  if share.ndim != 2:
    raise ValueError("expert_share lists must all have the same length K")
  num_experts = share.shape[1]
  fig, ax = plt.subplots(figsize=(8, 4.5))
  cmap = plt.get_cmap("tab20" if num_experts > 10 else "tab10")
  for e in range(num_experts):
    ax.plot(steps, share[:, e], lw=1.2, color=cmap(e % cmap.N), label=f"expert {e}",
            marker="o" if len(steps) < 3 else None)
  ax.axhline(1.0 / num_experts, ls="--", color="black", lw=1, label=f"uniform 1/K = {1 / num_experts:.3f}")
  ax.set(xlabel="training step", ylabel="share of routing assignments", ylim=(0, None),
         title=f"Expert load during training (K = {num_experts})")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
  ax.grid(alpha=0.3)
  _save(fig, png_path, written, "expert_load")


def routing_heatmap_by_group(share, group_names, path: str | None = None, *, ax=None,
                             n_examples=None, score: float | None = None,
                             group_label: str = "group", written: dict | None = None):
  """Annotated heatmap of `specialisation.group_expert_share` (G, K); returns the figure.

  Drawn as `routing_heatmap` is (viridis from 0, 2-decimal cells, "n/a" for a group without
  assignments, i.e. an all-zero row). Draws into ``ax`` when given, else into a new figure
  built without pyplot, so a returned figure holds no pyplot state and needs no closing.
  With ``path`` the PNG is saved and ``written["routing_by_group"] = path`` is set.
  ``n_examples`` (G,) adds "(n=...)" to the row labels, ``score`` (the specialisation NMI)
  goes in the title.
  """
  from matplotlib.figure import Figure

  share = np.asarray(share, dtype=np.float64)
  if share.ndim != 2 or len(group_names) != share.shape[0]:
    raise ValueError(f"share {share.shape} must be (G, K) with G = {len(group_names)} names")
  rows, num_experts = share.shape
  if ax is None:
    fig = Figure(figsize=(1.0 + 0.75 * num_experts, 1.2 + 0.38 * rows))
    ax = fig.subplots()
  else:
    fig = ax.figure
  empty = share.sum(axis=1) == 0
  im = ax.imshow(np.where(empty[:, None], np.nan, share), cmap="viridis", aspect="auto",
                 vmin=0.0, vmax=max(share.max() if share.size else 1.0, 1e-9))
  vmax = im.get_clim()[1]
  for r in range(rows):
    for e in range(num_experts):
      if empty[r]:
        ax.text(e, r, "n/a", ha="center", va="center", fontsize=7, color="grey")
        continue
      v = share[r, e]
      ax.text(e, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
              color="black" if v > 0.6 * vmax else "white")
  names = [str(n) for n in group_names]
  if n_examples is not None:
    names = [f"{n} (n={int(c)})" for n, c in zip(names, n_examples)]
  ax.set_xticks(range(num_experts), [f"E{e}" for e in range(num_experts)])
  ax.set_yticks(range(rows), names, fontsize=8)
  ax.set_xlabel("expert")
  ax.set_ylabel(group_label)
  nmi = f", NMI {score:.3f}" if score is not None and np.isfinite(score) else ""
  ax.set_title(f"Share of each {group_label}'s assignments per expert "
               f"(uniform = {1 / num_experts:.3g}{nmi})", fontsize=9)
  fig.colorbar(im, ax=ax, label="share of assignments")
  if path is not None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    if written is not None:
      written["routing_by_group"] = path
  return fig
