"""How much the MoE experts specialise by group (imaging modality, source dataset).

Every one of a row's k top-k assignments is one (group, expert) sample, as in
`moe.routing.expert_assignment_share` and `figures.routing_heatmap`, so a group's share row
and the mutual information below weigh each row k times and uniform routing reads 1/K.

Group order (the rows of `group_expert_share`, given by `group_order`): integer groups are
their own row index, rows 0..G-1 with G = ``num_groups`` or max(groups) + 1, so row g stays
group g in a split that lacks some group; any other groups (e.g. strings) are sorted, as
`np.unique` sorts them, and only those present in ``groups`` (masked rows included) appear.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def group_order(groups, num_groups: int | None = None) -> np.ndarray:
  """The groups that label the rows of `group_expert_share`, in its row order."""
  groups = np.asarray(groups)
  if groups.ndim != 1:
    raise ValueError(f"groups {groups.shape} must be (N,)")
  if np.issubdtype(groups.dtype, np.integer):
    if groups.size and groups.min() < 0:
      raise ValueError("integer groups must be 0..G-1")
    present = int(groups.max()) + 1 if groups.size else 0
    if num_groups is not None and num_groups < present:
      raise ValueError(f"group {present - 1} given with num_groups={num_groups}")
    return np.arange(present if num_groups is None else num_groups)
  return np.unique(groups)


def _checked(expert_index, groups, num_experts: int, valid):
  """(expert_index (N, k), groups (N,), valid (N,) bool), validated against each other."""
  idx = np.asarray(expert_index)
  if idx.ndim == 1:
    idx = idx[:, None]
  groups = np.asarray(groups)
  if idx.ndim != 2 or groups.shape != idx.shape[:1]:
    raise ValueError(f"expert_index {idx.shape} must be (N, k) and groups {groups.shape} (N,)")
  if idx.size and (idx.min() < 0 or idx.max() >= num_experts):
    raise ValueError(f"expert_index outside 0..{num_experts - 1}")
  valid = np.ones(len(groups), bool) if valid is None else np.asarray(valid).astype(bool)
  if valid.shape != groups.shape:
    raise ValueError(f"valid {valid.shape} must be (N,) like groups {groups.shape}")
  return idx, groups, valid


def group_expert_share(expert_index, groups, num_experts: int, valid=None, *,
                       num_groups: int | None = None) -> np.ndarray:
  """(G, K): the share of each group's (valid) top-k assignments that go to each expert.

  Rows follow `group_order(groups, num_groups)` and sum to 1; a group with no valid rows
  keeps its row, all zeros, so the row order does not depend on the mask. Rows with
  ``valid`` False (padding) are left out.
  """
  idx, groups, valid = _checked(expert_index, groups, num_experts, valid)
  order = group_order(groups, num_groups)
  row = np.searchsorted(order, groups)   # exact: every group is in `order`
  counts = np.zeros((len(order), num_experts), np.float64)
  np.add.at(counts, (np.repeat(row[valid], idx.shape[1]), idx[valid].ravel()), 1.0)
  total = counts.sum(axis=1, keepdims=True)
  return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def specialisation_score(expert_index, groups, num_experts: int, valid=None, *,
                         average_method: str = "min") -> float:
  """Normalised mutual information I(group; expert) over all valid (row, assignment) pairs.

  The default normalisation is "min", I / min(H(group), H(expert)), not sklearn's
  "arithmetic" (the mean of the two): a row's k top-k experts are distinct, so even with
  every group on experts of its own H(expert | group) >= log k and the arithmetic NMI
  stays below 1 (2 log G / (2 log G + log 2) for G equally common groups on 2 experts
  each); "min" reads 1 exactly when no expert serves two groups and ~0 when routing
  ignores the group. Any of sklearn's methods can be asked for.

  Returns nan when the valid rows hold fewer than two groups: with one group there is no
  group information to share and sklearn's NMI is degenerate (1.0 or 0.0 by convention).
  """
  idx, groups, valid = _checked(expert_index, groups, num_experts, valid)
  groups, idx = groups[valid], idx[valid]
  if len(np.unique(groups)) < 2:
    return float("nan")
  return float(normalized_mutual_info_score(np.repeat(groups, idx.shape[1]), idx.ravel(),
                                            average_method=average_method))
