"""Training batches that mix several datasets, for one model trained across modalities.

Each dataset is shuffled by the seed (a fresh permutation each epoch) and repeated forever,
on its own; Grain's `MapDataset.mix` interleaves them by weight. That interleave is
deterministic, not sampled: every prefix of the mixed stream holds each dataset's share to
within a row or two (less than one per dataset), so a batch's composition hardly varies and
the seed changes only which examples come, not how many from each. Batches then load exactly
as `pipeline.train_iterator` loads one dataset's: one `random_map` gathers the batch's rows
from their splits (grouped by dataset), so the iterator state is still one small JSON counter.

Label widths differ between datasets: `labels` and `label_mask` are padded to the widest
(label 0, mask False), and `dataset` says which dataset each row came from, so that the
trainer can pick the head or the columns that belong to it.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import pipeline

# dtype of each batch key; rows of every dataset are cast to these.
DTYPES = {"image": np.uint8, "input_ids": np.int32, "attention_mask": np.int32,
          "labels": np.float32, "label_mask": bool}


def _name(names: Sequence[str] | None, d: int) -> str:
  return f"{names[d]!r} (dataset {d})" if names else f"dataset {d}"


def _proportions(weights: Sequence[float], n: int, names) -> np.ndarray:
  """Positive weights as integers whose smallest is exactly 100. Grain turns float weights
  into integers scaled so, but by truncation (a weight that scales to 99.99999 becomes 99);
  rounding here first keeps every share within 0.5% of the smallest weight."""
  w = np.asarray(weights, np.float64)
  if w.shape != (n,):
    raise BadInputError(f"{len(weights)} mixture weights for {n} datasets")
  bad = [_name(names, d) for d in range(n) if not np.isfinite(w[d]) or w[d] < 0]
  if bad:
    raise BadInputError(f"mixture weights must be finite and >= 0: {', '.join(bad)}")
  if not w.any():
    raise BadInputError("every mixture weight is 0")
  return np.where(w > 0, np.round(100 * w / w[w > 0].min()), 0).astype(np.int64)


def _spec(splits: Sequence, names) -> tuple[dict[str, tuple], list[int]]:
  """Per-row shapes shared by all datasets and each one's label width, from one example of
  each: a mismatch is found here, before any batch, naming the datasets."""
  first, widths = {}, []
  for d, split in enumerate(splits):
    if len(split) == 0:
      raise BadInputError(f"{_name(names, d)} has no training examples")
    ex = split.gather(np.array([0]))
    for key, what in (("image", "image size"), ("input_ids", "text length"),
                      ("attention_mask", "attention mask length")):
      shape = tuple(ex[key].shape[1:])
      if key in first and shape != first[key][1]:
        e = first[key][0]
        raise BadInputError(f"mixed datasets differ in {what}: {_name(names, e)} has "
                            f"{first[key][1]}, {_name(names, d)} has {shape}")
      first.setdefault(key, (d, shape))
    if ex["labels"].shape != ex["label_mask"].shape:
      raise BadInputError(f"{_name(names, d)}: labels {ex['labels'].shape[1:]} and label_mask "
                          f"{ex['label_mask'].shape[1:]} differ in width")
    widths.append(int(ex["labels"].shape[1]))
  return {k: v[1] for k, v in first.items()}, widths


class _Tag:
  """Index within dataset d -> [d, index] (a class, not a lambda, so that Grain's worker
  processes can pickle it)."""

  def __init__(self, d: int):
    self.d = d

  def __call__(self, i: int) -> np.ndarray:
    return np.array([self.d, i], np.int64)


def mixed_train_iterator(splits: Sequence, weights: Sequence[float], batch_size: int,
                         seed: int, worker_count: int = 0, rows: slice | None = None,
                         augment_cfg=None, *,
                         names: Sequence[str] | None = None) -> grain.DatasetIterator:
  """Global batches mixing `splits` by `weights` (the same on every process); each process
  loads only its `rows`, as in `pipeline.train_iterator`. A weight of 0 leaves its dataset
  out of the batches but not out of the label width, so that setting a weight to 0 does not
  change the model's head. Each dataset's permutation is seeded by (seed, its index) alone:
  changing another dataset's weight does not reorder it. `names` only label error messages."""
  if batch_size < 1:
    raise BadInputError(f"batch size {batch_size} < 1")
  if names is not None and len(names) != len(splits):
    raise BadInputError(f"{len(names)} dataset names for {len(splits)} datasets")
  props = _proportions(weights, len(splits), names)
  spec, widths = _spec(splits, names)
  width = max(widths)
  rows = slice(None) if rows is None else rows
  use_augment = augment_cfg is not None and augment_cfg.enabled

  def load(pairs, rng):
    pairs = np.asarray(pairs)[rows]
    m = len(pairs)
    batch = {k: np.empty((m,) + spec[k], DTYPES[k]) for k in spec}
    batch["labels"] = np.zeros((m, width), DTYPES["labels"])
    batch["label_mask"] = np.zeros((m, width), DTYPES["label_mask"])
    for d in np.unique(pairs[:, 0]):
      where = np.nonzero(pairs[:, 0] == d)[0]
      part = splits[d].gather(pairs[where, 1])
      for k in spec:
        batch[k][where] = part[k]
      batch["labels"][where, :widths[d]] = part["labels"]
      batch["label_mask"][where, :widths[d]] = part["label_mask"]
    batch["dataset"] = pairs[:, 0].astype(np.int32)
    if use_augment:
      batch["image"] = pipeline.augment(batch["image"], rng, augment_cfg)
    return batch

  parents, kept = [], []
  for d, split in enumerate(splits):
    if props[d]:
      shuffle_seed = int(np.random.SeedSequence([seed, d]).generate_state(1)[0])
      parents.append(grain.MapDataset.range(len(split))
                     .shuffle(seed=shuffle_seed)
                     .repeat(None)
                     .map(_Tag(d)))
      kept.append(int(props[d]))
  return pipeline.batched(grain.MapDataset.mix(parents, kept), batch_size, load, seed,
                          worker_count)

