"""metrics.jsonl (always) and TensorBoard event files (when a writer library is installed)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

log = logging.getLogger(__name__)


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class MetricWriter:

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    try:
      from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except Exception:  # noqa: BLE001 - TensorBoard is optional
      log.debug("TensorBoard writer unavailable; writing metrics.jsonl only")

  def write(self, step: int, metrics: dict, **extra) -> dict:
    row = {"step": int(step), **extra, **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if isinstance(v, (int, float)) and k != "step":
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return row

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All rows of metrics.jsonl; a resumed run may have repeated some steps (last one wins)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
