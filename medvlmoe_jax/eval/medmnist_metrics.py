"""ACC and AUC as the official MedMNIST benchmark reports them.

Published MedMNIST numbers come from ``medmnist.Evaluator`` (``getAUC`` /
``getACC`` in ``medmnist/evaluator.py``), whose conventions differ from our
own macro AUC in ``metrics.py``: binary-class sets are scored on the last
(positive-class) column only, binary-class and multi-label ACC threshold the
raw score at ``> threshold`` instead of taking an argmax, and multi-class AUC
is one-vs-rest averaged over *score columns*. This module reproduces those
rules with numpy + scikit-learn, with the same accumulation order so the
results match to the last bit, so that our numbers can be put next to the
paper tables without depending on the (torch-based) ``medmnist`` package.

MedMNIST task strings: 'multi-label, binary-class', 'binary-class',
'multi-class', 'ordinal-regression' (the last two are scored identically).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

MULTILABEL = "multi-label, binary-class"
BINARY = "binary-class"
MULTICLASS = "multi-class"
ORDINAL = "ordinal-regression"
MEDMNIST_TASKS = (MULTILABEL, BINARY, MULTICLASS, ORDINAL)

# Our task name -> the medmnist task it can stand for (see `resolve_task`).
_OURS = {"multilabel": (MULTILABEL,), "multiclass": (MULTICLASS, BINARY),
         "ordinal": (ORDINAL,)}


def _check_task(task: str) -> None:
  if task not in MEDMNIST_TASKS:
    raise ValueError(f"unknown medmnist task {task!r}; expected one of {MEDMNIST_TASKS}")


def _squeezed(y_true, y_score):
  # medmnist squeezes both arrays first, so (N, 1) labels and (N,) scores are accepted.
  y_true = np.asarray(y_true).squeeze()
  y_score = np.asarray(y_score).squeeze()
  if y_true.shape[:1] != y_score.shape[:1]:
    raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in N")
  return y_true, y_score


def _positive_score(y_score):
  # Binary-class: a 2-D score is read as (negative, positive); only the last column counts.
  if y_score.ndim == 2:
    return y_score[:, -1]
  if y_score.ndim != 1:
    raise ValueError(f"binary-class scores must be (N,) or (N, C), got {y_score.shape}")
  return y_score


def _auc(y, s, what: str) -> float:
  if np.unique(y).size < 2:
    raise ValueError(f"AUC undefined for {what}: y_true has a single outcome "
                     "(medmnist's roc_auc_score raises here too)")
  return roc_auc_score(y, s)


def medmnist_auc(y_true_int, y_score, task: str) -> float:
  """MedMNIST ``getAUC``.

  ``y_true_int``: medmnist-format labels, (N,) / (N, 1) class indices, or
  (N, L) 0/1 for multi-label. ``y_score``: (N, C) scores ((N,) allowed for
  binary-class). Raises ValueError where medmnist would fail (a label or
  class with a single outcome).
  """
  _check_task(task)
  y_true, y_score = _squeezed(y_true_int, y_score)
  if task == MULTILABEL:
    aucs = [_auc(y_true[:, i], y_score[:, i], f"label {i}") for i in range(y_score.shape[1])]
    return float(sum(aucs) / y_score.shape[1])
  if task == BINARY:
    return float(_auc(y_true, _positive_score(y_score), "the binary task"))
  # multi-class / ordinal: one-vs-rest per score column, plain mean over columns.
  aucs = [_auc((y_true == i).astype(float), y_score[:, i], f"class {i}")
          for i in range(y_score.shape[1])]
  return float(sum(aucs) / y_score.shape[1])


def medmnist_acc(y_true_int, y_score, task: str, threshold: float = 0.5) -> float:
  """MedMNIST ``getACC``.

  Multi-label: predicted positive iff ``score > threshold`` (strict), accuracy
  per label then averaged over labels. Binary-class: ``positive score >
  threshold`` (so unnormalised scores are not argmaxed). Multi-class /
  ordinal: argmax (first index on ties); ``threshold`` is ignored.
  """
  _check_task(task)
  y_true, y_score = _squeezed(y_true_int, y_score)
  if task == MULTILABEL:
    pred = y_score > threshold
    accs = [float(np.mean(y_true[:, i] == pred[:, i])) for i in range(y_true.shape[1])]
    return float(sum(accs) / y_true.shape[1])
  if task == BINARY:
    return float(np.mean(y_true == (_positive_score(y_score) > threshold)))
  return float(np.mean(y_true == np.argmax(y_score, axis=-1)))


def resolve_task(task: str, num_classes: int, medmnist_task: str | None = None,
                 dataset: str | None = None) -> str:
  """The medmnist task string for our ``task`` ('multilabel' | 'multiclass' | 'ordinal').

  Precedence: ``medmnist_task``, then ``medmnist.INFO[dataset]['task']``, then
  inference: 'multiclass' with 2 classes is 'binary-class' (every 2-class
  MedMNIST set is binary-class, scored on the positive column), otherwise
  'multi-class'. An explicit task that contradicts ``task`` is an error.
  """
  if task not in _OURS:
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(_OURS)}")
  if medmnist_task is None and dataset is not None:
    import medmnist  # only for its INFO table; installed with --no-deps
    if dataset not in medmnist.INFO:
      raise ValueError(f"{dataset!r} is not a MedMNIST dataset")
    medmnist_task = medmnist.INFO[dataset]["task"]
  if medmnist_task is None:
    if task == "multiclass":
      return BINARY if num_classes == 2 else MULTICLASS
    return _OURS[task][0]
  _check_task(medmnist_task)
  if medmnist_task not in _OURS[task]:
    raise ValueError(f"medmnist task {medmnist_task!r} does not fit our task {task!r}")
  if medmnist_task == BINARY and num_classes != 2:
    raise ValueError(f"binary-class needs 2 one-hot columns, got {num_classes}")
  return medmnist_task


def to_medmnist_labels(labels, task: str) -> np.ndarray:
  """Our (N, C) float labels -> medmnist's int labels: (N, L) for multi-label,
  (N, 1) class indices for one-hot (multiclass / ordinal / binary)."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (N, C), got {labels.shape}")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 0/1 (uncertain or masked entries have no MedMNIST metric)")
  if task == "multilabel":
    return labels.astype(np.int64)
  if not np.all(labels.sum(axis=1) == 1):
    raise ValueError(f"{task} labels must be one-hot: some rows do not have exactly one 1")
  return np.argmax(labels, axis=1).astype(np.int64)[:, None]


def medmnist_report(labels, probs, task: str, *, medmnist_task: str | None = None,
                    dataset: str | None = None, threshold: float = 0.5) -> dict:
  """MedMNIST ACC / AUC from our labels and probabilities.

  ``labels``: (N, C) as our pipeline stores them (multi-hot for 'multilabel',
  one-hot for 'multiclass' / 'ordinal', C=2 one-hot for a binary-class set).
  ``probs``: (N, C) model probabilities (sigmoid for multilabel, softmax
  otherwise). The medmnist task comes from ``resolve_task``; pass ``dataset``
  (e.g. 'breastmnist') to take it from ``medmnist.INFO``.
  Returns ``{"medmnist_auc": float, "medmnist_acc": float}``.
  """
  probs = np.asarray(probs, dtype=np.float64)
  labels = np.asarray(labels)
  if probs.shape != labels.shape:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be (N, C)")
  mtask = resolve_task(task, labels.shape[1], medmnist_task, dataset)
  y_true = to_medmnist_labels(labels, task)
  return {"medmnist_auc": medmnist_auc(y_true, probs, mtask),
          "medmnist_acc": medmnist_acc(y_true, probs, mtask, threshold)}
