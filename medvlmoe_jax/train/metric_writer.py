"""metrics.jsonl and TensorBoard event files (tensorboardX: no TensorFlow, no torch).

Every row goes to ``WORKDIR/metrics.jsonl`` and, as scalars, to event files under
``WORKDIR/tensorboard``: each number in the row (not ``step``, not strings) is one scalar,
tagged ``SPLIT/NAME`` when the row has a ``split`` (``train/loss``, ``val/val_mean_auc``);
a list such as ``expert_share`` is one scalar per element (``train/expert_share/0``, ...).
Report figures (matplotlib Figures or PNG files) go in as images with ``write_figures``.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import sys
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image


def _import_summary_writer():
  """tensorboardX's SummaryWriter, without the ``import torch`` its writer module tries.

  tensorboardX.writer imports torch when it is installed (only for a type alias): seconds and
  hundreds of MB in every training process, and on GPU hosts torch's CUDA libraries loaded next
  to JAX's. Nothing used here needs torch, so it is hidden while tensorboardX is imported.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` -> ImportError, which tensorboardX catches
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


SummaryWriter = _import_summary_writer()
_writer_ids = itertools.count()


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def _scalars(tag: str, v) -> Iterator[tuple[str, float]]:
  """(tag, value) for a number, or for every number of a (nested) list as tag/i[/j...]."""
  if isinstance(v, (bool, int, float)):
    yield tag, float(v)
  elif isinstance(v, list):
    for i, x in enumerate(v):
      yield from _scalars(f"{tag}/{i}", x)


def _png_pixels(figure) -> np.ndarray:
  """(H, W, 3) uint8 pixels of a matplotlib Figure (left open) or of an image file."""
  if isinstance(figure, (str, os.PathLike)):
    with Image.open(figure) as im:
      return np.asarray(im.convert("RGB"))
  buf = io.BytesIO()
  figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im.convert("RGB"))


class MetricWriter:

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    # tensorboardX names event files by the second and host, and opens them with "wb": the suffix
    # keeps two writers started in the same second (e.g. a quick restart) from truncating each other.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             filename_suffix=f".{os.getpid()}.{next(_writer_ids)}")

  def write(self, step: int, metrics: dict, **extra) -> dict:
    row = {"step": int(step), **extra, **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    split = row.get("split")
    prefix = f"{split}/" if isinstance(split, str) and split else ""
    for k, v in row.items():
      if k != "step":
        for tag, x in _scalars(prefix + k, v):
          self._tb.add_scalar(tag, x, int(step))
    self._tb.flush()
    return row

  def write_figures(self, step: int, figures: Mapping[str, object]) -> None:
    """{tag: matplotlib Figure or path to an image file (PNG)} -> one TensorBoard image each.

    Figures are rendered at 100 dpi and left open; the caller closes them.
    """
    for tag, fig in figures.items():
      self._tb.add_image(tag, _png_pixels(fig), int(step), dataformats="HWC")
    self._tb.flush()

  def close(self):
    self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All rows of metrics.jsonl; a resumed run may have repeated some steps (last one wins)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
