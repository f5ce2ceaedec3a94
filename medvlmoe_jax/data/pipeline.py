"""From a config to batches: load splits, tokenize, and feed them through Grain.

Training batches come from a `grain.MapDataset` shuffled by seed (a fresh permutation each
epoch) and repeated; its iterator state is small JSON that goes into every checkpoint, so a
resumed run sees exactly the batches an uninterrupted one would. Evaluation batches are
padded to a fixed size (with a `valid` mask) so that one compiled eval step serves all.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import ml_collections
import numpy as np

from medvlmoe_jax.data import medmnist, synthetic
from medvlmoe_jax.data.preprocess import CLIP_MEAN, CLIP_STD
from medvlmoe_jax.data.splits import Split
from medvlmoe_jax.data.tokenizers import BioGptTokenizer, WordTokenizer



@dataclasses.dataclass
class Dataset:
  splits: dict[str, dict[str, np.ndarray]]   # split -> arrays (see `_encode`)
  class_names: list[str]
  groups: dict[str, np.ndarray | None]
  vocab_size: int


def make_tokenizer(data_cfg: ml_collections.ConfigDict):
  if data_cfg.tokenizer == "word":
    return WordTokenizer(synthetic.vocabulary())
  if data_cfg.tokenizer == "biogpt":
    if not data_cfg.tokenizer_path:
      raise ValueError("data.tokenizer='biogpt' needs data.tokenizer_path (a converted model "
                       "directory or a hub id)")
    return BioGptTokenizer(data_cfg.tokenizer_path)
  raise ValueError(f"data.tokenizer={data_cfg.tokenizer!r} is not one of ['word', 'biogpt']")


def _load_splits(config: ml_collections.ConfigDict) -> tuple[dict[str, Split], list[str]]:
  d = config.data
  if d.name == "synthetic":
    s = d.synthetic
    sizes = {"train": s.num_train, "val": s.num_val, "test": s.num_test}
    splits = {k: synthetic.make_split(k, n, s.num_classes, d.image_size, s.seed)
              for k, n in sizes.items()}
    return splits, synthetic.class_names(s.num_classes)
  if d.name == "medmnist":
    splits = medmnist.load_npz(d.path, d.get("medmnist_name", "medmnist"), d.task,
                               config.model.num_classes)
    return splits, [str(k) for k in range(config.model.num_classes)]
  raise ValueError(f"data.name={d.name!r} is not a known dataset ['synthetic', 'medmnist']")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size and images.shape[2] == size:
    return images
  from PIL import Image
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                   for im in images])


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  splits, names = _load_splits(config)
  tokenizer = make_tokenizer(config.data)
  encoded = {}
  for name, split in splits.items():
    ids, mask = tokenizer(split.texts, config.data.text_max_len)
    encoded[name] = dict(image=_resize(split.images, config.data.image_size), input_ids=ids,
                         attention_mask=mask, labels=split.labels.astype(np.float32),
                         label_mask=split.label_mask.astype(bool))
  num_classes = splits["train"].labels.shape[1]
  if num_classes != config.model.num_classes:
    raise ValueError(f"the data has {num_classes} classes but model.num_classes="
                     f"{config.model.num_classes}")
  return Dataset(encoded, names, {k: v.groups for k, v in splits.items()}, tokenizer.vocab_size)


def _gather(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[index] for k, v in arrays.items()}


def normalize(batch: dict) -> dict:
  """uint8 NHWC -> float32 normalised with the CLIP mean/std."""
  batch = dict(batch)
  batch["image"] = (batch["image"].astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
  return batch


def train_iterator(arrays: dict[str, np.ndarray], batch_size: int, seed: int,
                   worker_count: int = 0, rows: slice | None = None) -> grain.DatasetIterator:
  """Global batches of shuffled indices (the same on every process); each process loads only
  its `rows` (see `sharding.process_rows`), so the global batch does not depend on the
  number of processes."""
  n = len(next(iter(arrays.values())))
  if n < batch_size:
    raise ValueError(f"the training split ({n}) is smaller than one batch ({batch_size})")
  rows = slice(None) if rows is None else rows
  ds = (grain.MapDataset.range(n)
        .shuffle(seed=seed)
        .repeat(None)
        .batch(batch_size, drop_remainder=True)
        .map(lambda index: normalize(_gather(arrays, np.asarray(index)[rows]))))
  it = ds.to_iter_dataset()
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int,
                 rows: slice | None = None) -> Iterator[tuple[dict, np.ndarray]]:
  """(this process's rows, global valid mask) per fixed-size batch, in order; the last batch
  is padded by repeating its final row."""
  n = len(next(iter(arrays.values())))
  rows = slice(None) if rows is None else rows
  for start in range(0, n, batch_size):
    index = np.minimum(np.arange(start, start + batch_size), n - 1)
    valid = np.arange(start, start + batch_size) < n
    yield normalize(_gather(arrays, index[rows])), valid
