"""Evaluation metrics for multi-label / multi-class image classification.

Pure numpy + scikit-learn so reports can be produced on any host, without JAX.
Point estimates use ``sklearn.metrics.roc_auc_score`` (the reference
implementation); the bootstrap uses an equivalent weighted Mann-Whitney
computation because calling sklearn once per class and replicate is far too
slow.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

# Upper bound on replicate x example cells per bootstrap chunk (bounds memory).
_CHUNK_CELLS = 1 << 22


def _prepare(labels, scores, mask):
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal (N, C)")
  mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
  if mask.shape != labels.shape:
    raise ValueError(f"mask {mask.shape} must match labels {labels.shape}")
  return labels == 1, scores, mask


def per_class_auc(labels, scores, mask=None) -> np.ndarray:
  """AUC-ROC per class; NaN where the (masked) labels lack positives or negatives."""
  labels, scores, mask = _prepare(labels, scores, mask)
  aucs = np.full(labels.shape[1], np.nan)
  for c in range(labels.shape[1]):
    y, s = labels[mask[:, c], c], scores[mask[:, c], c]
    if 0 < y.sum() < y.size:
      aucs[c] = roc_auc_score(y, s)
  return aucs


def mean_auc(aucs) -> float:
  """Macro mean that skips unscorable (NaN) classes instead of propagating NaN."""
  aucs = np.asarray(aucs, dtype=np.float64)
  valid = aucs[~np.isnan(aucs)]
  return float(valid.mean()) if valid.size else float("nan")


def fast_auc(labels, scores, weights=None, mask=None) -> np.ndarray:
  """AUC per class for many example weightings at once, shape (B, C).

  ``weights`` (B, N) are per-example multiplicities (e.g. bootstrap counts;
  None means one unweighted sample). The result equals ``roc_auc_score`` on
  the correspondingly repeated data: the Mann-Whitney U statistic counts, for
  every positive, the negatives scored strictly lower plus half of those tied
  with it, computed per tie group of the sorted scores.
  """
  labels, scores, mask = _prepare(labels, scores, mask)
  n, num_classes = labels.shape
  weights = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64)
  if weights.ndim != 2 or weights.shape[1] != n:
    raise ValueError(f"weights must have shape (B, {n}), got {weights.shape}")
  out = np.empty((weights.shape[0], num_classes))
  for c in range(num_classes):
    order = np.argsort(scores[:, c], kind="stable")
    s = scores[order, c]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie-group starts
    w = weights[:, order] * mask[order, c]
    pos = np.add.reduceat(w * labels[order, c], starts, axis=1)
    neg = np.add.reduceat(w, starts, axis=1) - pos
    neg_below = np.cumsum(neg, axis=1) - neg
    u = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
      out[:, c] = u / (pos.sum(axis=1) * neg.sum(axis=1))
  out[~np.isfinite(out)] = np.nan
  return out


def _group_codes(groups, n):
  if groups is None:
    return np.arange(n)
  if len(groups) != n:
    raise ValueError(f"groups has {len(groups)} entries, expected {n}")
  index: dict = {}
  return np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)


def bootstrap_ci(labels, scores, mask=None, groups=None, n_boot=1000, level=0.95,
                 seed=0) -> tuple[float, float]:
  """Percentile bootstrap CI of the macro-mean AUC.

  With ``groups`` (e.g. patient ids) whole groups are resampled, because
  examples of one patient are correlated and resampling them independently
  understates the uncertainty.
  """
  labels, scores, mask = _prepare(labels, scores, mask)
  n = labels.shape[0]
  codes = _group_codes(groups, n)
  num_groups = int(codes.max()) + 1 if n else 0
  if num_groups == 0 or n_boot <= 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  chunk = max(1, _CHUNK_CELLS // max(n, num_groups))
  means = []
  for start in range(0, n_boot, chunk):
    b = min(chunk, n_boot - start)
    draws = rng.integers(0, num_groups, size=(b, num_groups))
    flat = (draws + num_groups * np.arange(b)[:, None]).ravel()
    group_counts = np.bincount(flat, minlength=b * num_groups).reshape(b, num_groups)
    aucs = fast_auc(labels, scores, group_counts[:, codes], mask)
    valid = ~np.isnan(aucs)
    with np.errstate(invalid="ignore"):
      means.append(np.where(valid, aucs, 0).sum(1) / valid.sum(1))
  means = np.concatenate(means)
  means = means[~np.isnan(means)]
  if means.size == 0:
    return float("nan"), float("nan")
  alpha = (1.0 - level) / 2.0
  low, high = np.quantile(means, [alpha, 1.0 - alpha])
  return float(low), float(high)


def _none_if_nan(x):
  return None if x is None or np.isnan(x) else float(x)


def classification_report(labels, scores, class_names, mask=None, groups=None, n_boot=1000,
                          seed=0) -> dict:
  """JSON-ready summary; NaN becomes None so strict JSON encoders accept it."""
  aucs = per_class_auc(labels, scores, mask)
  if len(class_names) != aucs.size:
    raise ValueError(f"{len(class_names)} class names for {aucs.size} classes")
  low, high = bootstrap_ci(labels, scores, mask, groups, n_boot=n_boot, seed=seed)
  return {
    "per_class_auc": {str(name): _none_if_nan(a) for name, a in zip(class_names, aucs)},
    "mean_auc": _none_if_nan(mean_auc(aucs)),
    "mean_auc_ci95": [_none_if_nan(low), _none_if_nan(high)],
    "num_examples": int(np.asarray(labels).shape[0]),
    "num_classes_scored": int(np.sum(~np.isnan(aucs))),
    "n_boot": int(n_boot),
  }


def format_table(report: dict) -> str:
  """Aligned plain-text table for logs and terminals (a table per dataset of a mixture)."""

  def fmt(x):
    return "n/a" if x is None or np.isnan(x) else f"{x:.4f}"

  if "datasets" in report:
    tables = [f"{name}:\n{format_table(r)}" for name, r in report["datasets"].items()]
    mean = f"mean over {len(tables)} datasets: AUC {fmt(report['mean_auc'])}"
    if report.get("mean_accuracy") is not None:
      mean += f", accuracy {fmt(report['mean_accuracy'])}"
    return "\n\n".join(tables + [mean])

  names = list(report["per_class_auc"])
  width = max([len(n) for n in names] + [len("class")])
  lines = [f"{'class':<{width}}  {'AUC':>6}  95% CI", "-" * (width + 24)]
  lines += [f"{n:<{width}}  {fmt(a):>6}" for n, a in report["per_class_auc"].items()]
  low, high = report["mean_auc_ci95"]
  lines.append("-" * (width + 24))
  lines.append(f"{'mean':<{width}}  {fmt(report['mean_auc']):>6}  [{fmt(low)}, {fmt(high)}]")
  if report.get("accuracy") is not None:
    lines.append(f"{'accuracy':<{width}}  {fmt(report['accuracy']):>6}")
  if report.get("retrieval"):
    r = report["retrieval"]
    lines.append("retrieval R@1/5/10: image->text " + " / ".join(
        fmt(r[f"image_to_text_R@{k}"]) for k in (1, 5, 10)) + ", text->image " + " / ".join(
        fmt(r[f"text_to_image_R@{k}"]) for k in (1, 5, 10)) + " (chance R@1 "
        f"{fmt(r['image_to_text_chance_R@1'])} / {fmt(r['text_to_image_chance_R@1'])})")
  return "\n".join(lines)
