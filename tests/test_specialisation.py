"""Expert specialisation by group: shares, NMI against a hand computation, the figure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medvlmoe_jax.eval import figures
from medvlmoe_jax.eval.specialisation import (group_expert_share, group_order,
                                              specialisation_score)


def _exclusive(num_groups=4, per_group=50, seed=0):
  """Group g always routes to experts {2g, 2g + 1}, in either slot order."""
  rng = np.random.default_rng(seed)
  groups = np.repeat(np.arange(num_groups), per_group)
  idx = np.stack([2 * groups, 2 * groups + 1], axis=1)
  swap = rng.random(len(groups)) < 0.5
  idx[swap] = idx[swap, ::-1]
  return idx, groups


def test_exclusive_routing_scores_one():
  idx, groups = _exclusive()
  share = group_expert_share(idx, groups, 8)
  want = np.kron(np.eye(4), [0.5, 0.5])      # row g: 0.5 on experts 2g and 2g + 1
  np.testing.assert_array_equal(share, want)
  assert specialisation_score(idx, groups, 8) == pytest.approx(1.0)
  # Why "min" is the default: the k = 2 distinct experts per row keep H(E | G) = log 2,
  # so the arithmetic NMI tops out at 2 log G / (2 log G + log 2) = 4 / 5 for G = 4.
  assert specialisation_score(idx, groups, 8, average_method="arithmetic") == pytest.approx(0.8)


def test_routing_independent_of_group_scores_near_zero():
  rng = np.random.default_rng(1)
  n, p = 30_000, np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
  groups = rng.integers(0, 3, n)
  # Top-2 without replacement from the same p for every group (Gumbel top-k).
  idx = np.argsort(-(np.log(p) + rng.gumbel(size=(n, 8))), axis=1)[:, :2]
  assert specialisation_score(idx, groups, 8) < 0.01
  share = group_expert_share(idx, groups, 8)
  np.testing.assert_allclose(share, np.broadcast_to(share.mean(axis=0), share.shape), atol=0.01)


def test_hand_worked_example_matches_manual_mutual_information():
  groups = np.array(["b", "b", "a", "a", "a"])
  idx = np.array([[0, 2], [2, 3], [1, 0], [0, 1], [3, 2]])
  valid = np.array([True, True, True, True, False])   # the last row is padding
  assert list(group_order(groups)) == ["a", "b"]
  share = group_expert_share(idx, groups, 4, valid)
  # a: {1, 0, 0, 1} of 4; b: {0, 2, 2, 3} of 4.
  np.testing.assert_array_equal(share, [[0.5, 0.5, 0.0, 0.0], [0.25, 0.0, 0.5, 0.25]])

  joint = np.zeros((2, 4))                   # (group, expert) pair counts by hand
  for g, row in zip([1, 1, 0, 0], idx[:4]):
    for e in row:
      joint[g, e] += 1
  p = joint / joint.sum()
  pg, pe = p.sum(axis=1), p.sum(axis=0)
  nz = p > 0
  mi = float((p[nz] * np.log(p[nz] / np.outer(pg, pe)[nz])).sum())
  h_g, h_e = -(pg * np.log(pg)).sum(), -(pe[pe > 0] * np.log(pe[pe > 0])).sum()
  # Closed forms: I = 5/4 ln 2 - 3/8 ln 3, H(G) = ln 2, H(E) = 5/2 ln 2 - 3/8 ln 3.
  assert mi == pytest.approx(1.25 * math.log(2) - 0.375 * math.log(3))
  assert h_e == pytest.approx(2.5 * math.log(2) - 0.375 * math.log(3))
  assert specialisation_score(idx, groups, 4, valid) == pytest.approx(mi / min(h_g, h_e))
  assert specialisation_score(idx, groups, 4, valid) == pytest.approx(1.25 - 0.375 * math.log2(3))
  assert specialisation_score(idx, groups, 4, valid, average_method="arithmetic") == (
      pytest.approx(mi / ((h_g + h_e) / 2)))


def test_valid_mask_drops_rows():
  idx, groups = _exclusive(num_groups=3, per_group=20)
  rng = np.random.default_rng(2)
  noisy = idx.copy()
  drop = rng.random(len(groups)) < 0.3
  junk = rng.integers(0, 8, drop.sum())      # routing that ignores the group, on dropped rows
  noisy[drop] = np.stack([junk, (junk + 1) % 8], axis=1)
  np.testing.assert_array_equal(group_expert_share(noisy, groups, 8, ~drop),
                                group_expert_share(idx[~drop], groups[~drop], 8))
  assert specialisation_score(noisy, groups, 8, ~drop) == pytest.approx(1.0)
  assert specialisation_score(noisy, groups, 8) < 1.0
  # A group with every row masked keeps its row, all zeros, and row g stays group g.
  only_0_2 = groups != 1
  share = group_expert_share(idx, groups, 8, only_0_2)
  assert share.shape == (3, 8)
  np.testing.assert_array_equal(share[1], 0.0)
  np.testing.assert_allclose(share[[0, 2]].sum(axis=1), 1.0)


def test_group_order_and_degenerate_cases():
  idx = np.array([[0, 1], [2, 3]])
  assert list(group_order(np.array([2, 0]))) == [0, 1, 2]
  assert group_expert_share(idx, [0, 2], 4, num_groups=5).shape == (5, 4)
  # One group (or none) left after masking: no group information, NMI is nan.
  assert math.isnan(specialisation_score(idx, [0, 0], 4))
  assert math.isnan(specialisation_score(idx, [0, 1], 4, [True, False]))
  assert math.isnan(specialisation_score(idx, [0, 1], 4, [False, False]))
  with pytest.raises(ValueError, match="outside"):
    group_expert_share(idx + 1, [0, 1], 4)
  with pytest.raises(ValueError, match="num_groups"):
    group_expert_share(idx, [0, 3], 4, num_groups=2)
  with pytest.raises(ValueError, match=r"\(N,\)"):
    specialisation_score(idx, [0, 1, 1], 4)


def test_routing_heatmap_by_group_renders(tmp_path):
  share = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
  path, written = tmp_path / "fig" / "by_group.png", {}
  fig = figures.routing_heatmap_by_group(share, ["CT", "MRI", "X-ray"], str(path),
                                         n_examples=[10, 0, 7], score=0.42,
                                         group_label="modality", written=written)
  assert path.exists() and path.stat().st_size > 1000
  assert written == {"routing_by_group": str(path)}
  ax = fig.axes[0]                           # the heatmap; fig.axes[1] is the colour bar
  assert ax.images[0].get_array().shape == (3, 4)
  assert [t.get_text() for t in ax.get_yticklabels()] == [
      "CT (n=10)", "MRI (n=0)", "X-ray (n=7)"]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["E0", "E1", "E2", "E3"]
  cells = [t.get_text() for t in ax.texts]
  assert len(cells) == 12 and cells[4:8] == ["n/a"] * 4 and cells[0] == "0.50"
  assert "share of each modality's assignments per expert" in ax.get_title().lower()
  assert "NMI 0.420" in ax.get_title()

  import matplotlib.pyplot as plt           # drawing into a caller's axes, nothing saved
  own_fig, own_ax = plt.subplots()
  try:
    assert figures.routing_heatmap_by_group(share[:1], ["all"], ax=own_ax) is own_fig
    assert "share of each group's assignments per expert" in own_ax.get_title().lower()
    assert [t.get_text() for t in own_ax.get_yticklabels()] == ["all"]
  finally:
    plt.close(own_fig)
  with pytest.raises(ValueError, match="names"):
    figures.routing_heatmap_by_group(share, ["a", "b"])
