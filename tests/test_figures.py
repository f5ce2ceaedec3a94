"""Report figures: files written, routing matrix by hand, CSV round trip."""

import csv
import logging

import numpy as np
import pytest

from medvlmoe_jax.eval import figures


def _nonempty(path):
  return path.exists() and path.stat().st_size > 1000


def test_routing_heatmap_hand_example(tmp_path):
  labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], np.float32)
  expert_index = np.array([[0, 1], [0, 2], [2, 3], [1, 3]])
  png, csv_path = tmp_path / "routing.png", tmp_path / "routing.csv"
  m = figures.routing_heatmap(labels, expert_index, ["cat", "dog"], 4, str(png), str(csv_path))
  # cat: examples 0, 1 -> slots {0, 1, 0, 2} over 4; dog: examples 1, 2 -> {0, 2, 2, 3};
  # all: every expert twice out of 8.
  want = np.array([[0.5, 0.25, 0.25, 0.0],
                   [0.25, 0.0, 0.5, 0.25],
                   [0.25, 0.25, 0.25, 0.25]])
  np.testing.assert_array_equal(m, want)
  np.testing.assert_allclose(m.sum(axis=1), 1.0)
  assert _nonempty(png)
  with open(csv_path, newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["class", "expert_0", "expert_1", "expert_2", "expert_3", "n_examples"]
  assert [r[0] for r in rows[1:]] == ["cat", "dog", "all"]
  assert [int(r[-1]) for r in rows[1:]] == [2, 2, 4]
  np.testing.assert_array_equal(np.array([[float(v) for v in r[1:-1]] for r in rows[1:]]), m)


def test_routing_heatmap_class_without_positives_and_bad_index(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.zeros((50, 3))
  labels[:, 0] = rng.random(50) < 0.5
  labels[:, 1] = 1 - labels[:, 0]
  idx = np.stack([rng.permutation(8)[:2] for _ in range(50)])
  m = figures.routing_heatmap(labels, idx, ["a", "b", "none"], 8,
                              str(tmp_path / "r.png"), str(tmp_path / "r.csv"))
  assert m.shape == (4, 8)
  assert np.all(np.isnan(m[2]))
  np.testing.assert_allclose(m[[0, 1, 3]].sum(axis=1), 1.0)
  with open(tmp_path / "r.csv", newline="") as f:
    rows = list(csv.reader(f))
  np.testing.assert_array_equal(
      np.array([[float(v) for v in r[1:-1]] for r in rows[1:]]), m)  # NaN == NaN here
  with pytest.raises(ValueError, match="outside"):
    figures.routing_heatmap(labels, idx + 1, ["a", "b", "none"], 8,
                            str(tmp_path / "x.png"), str(tmp_path / "x.csv"))


def test_roc_curves_skips_single_outcome_class(tmp_path):
  rng = np.random.default_rng(1)
  labels = (rng.random((80, 3)) < 0.4).astype(np.float32)
  labels[:, 2] = 0.0                      # only negatives: no ROC curve
  probs = np.clip(0.6 * labels + 0.5 * rng.random((80, 3)), 0, 1)
  mask = np.ones_like(labels, bool)
  mask[:40, 1] = False
  path = tmp_path / "roc.png"
  aucs = figures.roc_curves(labels, probs, ["A", "B", "C"], str(path), label_mask=mask)
  assert set(aucs) == {"A", "B"}
  from sklearn.metrics import roc_auc_score
  assert aucs["B"] == pytest.approx(roc_auc_score(labels[40:, 1], probs[40:, 1]))
  assert aucs["A"] > 0.8
  assert _nonempty(path)


def test_expert_load(tmp_path, caplog):
  rng = np.random.default_rng(2)
  rows = [{"split": "val", "step": 0, "auc": 0.5}]
  for step in range(0, 100, 10):
    s = rng.dirichlet(np.ones(4))
    rows.append({"split": "train", "step": step, "loss": 1.0, "expert_share": s.tolist()})
  path = tmp_path / "load.png"
  assert figures.expert_load(rows[::-1], str(path)) is None
  assert _nonempty(path)
  empty = tmp_path / "none.png"
  with caplog.at_level(logging.WARNING):
    figures.expert_load([{"split": "train", "step": 1, "loss": 1.0}], str(empty))
  assert not empty.exists()
  assert "expert_share" in caplog.text
