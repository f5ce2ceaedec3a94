"""The in-memory form every dataset loader returns, one per split."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Split:
  """Arrays of one split; `labels` is (N, C) float (one-hot for multiclass/ordinal tasks)."""
  images: np.ndarray            # (N, H, W, 3) uint8
  texts: list[str]
  labels: np.ndarray            # (N, C) float32 in {0, 1}
  label_mask: np.ndarray        # (N, C) bool, False where the label is unknown
  groups: np.ndarray | None = None   # (N,) patient ids for the grouped bootstrap

  def __post_init__(self):
    n = len(self.images)
    for name in ("texts", "labels", "label_mask"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"split has {n} images but {len(getattr(self, name))} {name}")

  def __len__(self) -> int:
    return len(self.images)
