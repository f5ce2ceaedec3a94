"""Parity of our MedMNIST ACC / AUC with the official `medmnist` package."""

import os

import numpy as np
import pytest

medmnist = pytest.importorskip("medmnist")
from medmnist.evaluator import Evaluator, getACC, getAUC  # noqa: E402

from medvlmoe_jax.eval.medmnist_metrics import (  # noqa: E402
    medmnist_acc, medmnist_auc, medmnist_report, resolve_task)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
RETINA_DIR = os.path.join(SHARED, "retinamnist")
TOL = 1e-12


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def retina():
  # Evaluator(size=None) opens <root>/retinamnist.npz (size 28; other sizes add "_<size>").
  path = os.path.join(RETINA_DIR, "retinamnist.npz")
  if not os.path.exists(path):
    pytest.fail(f"{path} is missing: put the official MedMNIST retinamnist.npz there "
                "(shared data folder next to the repository)")
  return Evaluator("retinamnist", "test", root=RETINA_DIR)


def _tied_scores(rng, n, c):
  # Few distinct values: many tied AUC ranks and many rows whose argmax is tied.
  s = rng.integers(0, 3, size=(n, c)).astype(np.float64) + 1.0
  return s / s.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_retinamnist_matches_evaluator(retina, kind):
  rng = np.random.default_rng(0)
  y = retina.labels
  assert y.shape == (400, 1)
  probs = _softmax(rng.normal(size=(400, 5))) if kind == "random" else _tied_scores(rng, 400, 5)
  ref = retina.evaluate(probs)
  assert abs(medmnist_auc(y, probs, "ordinal-regression") - ref.AUC) < TOL
  assert abs(medmnist_acc(y, probs, "ordinal-regression") - ref.ACC) < TOL
  # The same through our one-hot labels and task name, task looked up by dataset name.
  onehot = np.eye(5, dtype=np.float32)[y[:, 0]]
  rep = medmnist_report(onehot, probs, "ordinal", dataset="retinamnist")
  assert abs(rep["medmnist_auc"] - ref.AUC) < TOL
  assert abs(rep["medmnist_acc"] - ref.ACC) < TOL
  if kind == "ties":  # argmax ties do occur, so tie-breaking is exercised
    top = probs.max(axis=1, keepdims=True)
    assert np.any((probs == top).sum(axis=1) > 1)


def test_retinamnist_informative_scores(retina):
  # Scores that carry the label: parity where AUC and ACC are far from chance.
  rng = np.random.default_rng(1)
  y = retina.labels[:, 0]
  probs = _softmax(2.0 * np.eye(5)[y] + rng.normal(size=(400, 5)))
  ref = retina.evaluate(probs)
  assert ref.AUC > 0.8 and ref.ACC > 0.5
  assert abs(medmnist_auc(retina.labels, probs, "ordinal-regression") - ref.AUC) < TOL
  assert abs(medmnist_acc(retina.labels, probs, "ordinal-regression") - ref.ACC) < TOL


@pytest.mark.parametrize("ties", [False, True])
def test_multilabel(ties):
  rng = np.random.default_rng(2)
  y = (rng.random((300, 6)) < 0.3).astype(np.int64)
  s = rng.random((300, 6))
  if ties:  # includes scores exactly at the threshold (predicted negative: strict >)
    s = np.round(s * 4) / 4
    assert np.any(s == 0.5)
  task = "multi-label, binary-class"
  for thr in (0.5, 0.3):
    assert abs(medmnist_acc(y, s, task, thr) - getACC(y, s, task, thr)) < TOL
  assert abs(medmnist_auc(y, s, task) - getAUC(y, s, task)) < TOL
  rep = medmnist_report(y.astype(np.float32), s, "multilabel")
  assert abs(rep["medmnist_auc"] - getAUC(y, s, task)) < TOL
  assert abs(rep["medmnist_acc"] - getACC(y, s, task)) < TOL


def test_binary_class_uses_positive_column():
  rng = np.random.default_rng(3)
  y = (rng.random((200, 1)) < 0.4).astype(np.int64)
  task = "binary-class"
  # Unnormalised two-column scores: argmax and "last column > 0.5" disagree.
  s = rng.random((200, 2)) * 1.5
  assert np.any(np.argmax(s, 1) != (s[:, 1] > 0.5))
  assert abs(medmnist_acc(y, s, task) - getACC(y, s, task)) < TOL
  assert abs(medmnist_auc(y, s, task) - getAUC(y, s, task)) < TOL
  # One-column scores are accepted too.
  assert abs(medmnist_auc(y, s[:, 1:], task) - getAUC(y, s[:, 1:], task)) < TOL
  assert abs(medmnist_acc(y, s[:, 1:], task) - getACC(y, s[:, 1:], task)) < TOL
  # Our 2-class one-hot labels resolve to binary-class (as every 2-class MedMNIST set).
  p = _softmax(rng.normal(size=(200, 2)))
  onehot = np.eye(2, dtype=np.float32)[y[:, 0]]
  rep = medmnist_report(onehot, p, "multiclass")
  assert abs(rep["medmnist_auc"] - getAUC(y, p, task)) < TOL
  assert abs(rep["medmnist_acc"] - getACC(y, p, task)) < TOL
  rep = medmnist_report(onehot, p, "multiclass", dataset="breastmnist")
  assert abs(rep["medmnist_auc"] - getAUC(y, p, task)) < TOL


@pytest.mark.parametrize("ties", [False, True])
def test_multi_class(ties):
  rng = np.random.default_rng(4)
  y = rng.integers(0, 8, size=(500, 1))
  s = _tied_scores(rng, 500, 8) if ties else _softmax(rng.normal(size=(500, 8)))
  for task in ("multi-class", "ordinal-regression"):
    assert abs(medmnist_auc(y, s, task) - getAUC(y, s, task)) < TOL
    assert abs(medmnist_acc(y, s, task) - getACC(y, s, task)) < TOL
  rep = medmnist_report(np.eye(8)[y[:, 0]], s, "multiclass", dataset="bloodmnist")
  assert abs(rep["medmnist_auc"] - getAUC(y, s, "multi-class")) < TOL
  assert abs(rep["medmnist_acc"] - getACC(y, s, "multi-class")) < TOL


def test_task_resolution_and_errors():
  assert resolve_task("multiclass", 2) == "binary-class"
  assert resolve_task("multiclass", 9) == "multi-class"
  assert resolve_task("ordinal", 5) == "ordinal-regression"
  assert resolve_task("multilabel", 14) == "multi-label, binary-class"
  assert resolve_task("multiclass", 2, medmnist_task="multi-class") == "multi-class"
  assert resolve_task("multilabel", 14, dataset="chestmnist") == "multi-label, binary-class"
  with pytest.raises(ValueError, match="does not fit"):
    resolve_task("multiclass", 5, dataset="retinamnist")
  with pytest.raises(ValueError, match="unknown"):
    medmnist_auc(np.zeros(4), np.zeros((4, 2)), "multiclass")
  with pytest.raises(ValueError, match="one-hot"):
    medmnist_report(np.ones((3, 3)), np.ones((3, 3)) / 3, "multiclass")
  # A class absent from y_true: medmnist fails, so do we (with a clearer message).
  y = np.array([0, 1, 0, 1])
  with pytest.raises(ValueError, match="single outcome"):
    medmnist_auc(y, np.full((4, 3), 1 / 3), "multi-class")
