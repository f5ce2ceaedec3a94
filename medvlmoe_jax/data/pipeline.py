"""From a config to batches: open the dataset, tokenize, and feed it through Grain.

A built dataset (`data.name = "tfds"`, see `data/builder.py`) is read with TFDS's
`as_data_source` (what `tfds.data_source` returns: random access over array_record, no
TensorFlow) and decoded on access, in Grain's worker processes when `data.worker_count > 0`.
Training batches come from a `grain.MapDataset` shuffled by seed (a fresh permutation each
epoch) and repeated; its iterator state is small JSON that goes into every checkpoint, so a
resumed run sees exactly the batches an uninterrupted one would. Evaluation batches are
padded to a fixed size (with a `valid` mask) so that one compiled eval step serves all.
Images stay uint8 up to the device, where the model normalises them
(`models.vision.normalize_pixels`): a quarter of the bytes per step, no float work on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import builder, synthetic
from medvlmoe_jax.data.tokenizers import BioGptTokenizer, WordTokenizer


class ArraySplit:
  """An in-memory split (the synthetic demo): pre-tokenized arrays."""

  def __init__(self, arrays: dict[str, np.ndarray], groups: np.ndarray | None = None,
               texts: list[str] | None = None):
    self.arrays, self.groups, self.texts = arrays, groups, texts

  def __len__(self) -> int:
    return len(self.arrays["labels"])

  @property
  def labels(self) -> np.ndarray:
    return self.arrays["labels"]

  @property
  def label_mask(self) -> np.ndarray:
    return self.arrays["label_mask"]

  def gather(self, index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self.arrays.items()}


class TfdsSplit:
  """A split of a built dataset: examples decoded and tokenized on access."""

  def __init__(self, dataset, split: str, tokenizer, max_len: int):
    self.dataset, self.split, self.tokenizer, self.max_len = dataset, split, tokenizer, max_len
    self.source = dataset.as_data_source(split)
    self._meta = None

  def __len__(self) -> int:
    return len(self.source)

  def _read_meta(self):
    """Labels and patients of the whole split, for the metrics: images are skipped, not
    decoded."""
    if self._meta is None:
      raw = self.dataset.as_data_source(self.split, decoders={"image": tfds.decode.SkipDecoding()})
      examples = raw.__getitems__(range(len(raw)))
      self._meta = (np.stack([e["labels"] for e in examples]).astype(np.float32),
                    np.stack([e["label_mask"] for e in examples]).astype(bool),
                    np.asarray([e["patient_id"].decode() for e in examples]),
                    [e["text"].decode() for e in examples])
    return self._meta

  @property
  def texts(self) -> list[str]:
    return self._read_meta()[3]

  @property
  def labels(self) -> np.ndarray:
    return self._read_meta()[0]

  @property
  def label_mask(self) -> np.ndarray:
    return self._read_meta()[1]

  @property
  def groups(self) -> np.ndarray | None:
    patients = self._read_meta()[2]
    return patients if np.all(patients != "") else None

  def gather(self, index: np.ndarray) -> dict[str, np.ndarray]:
    # One record at a time: the batched __getitems__ reads with a thread pool per call,
    # which in Grain's worker processes made a batch 10x slower than here.
    examples = [self.source[int(i)] for i in index]
    ids, mask = self.tokenizer([e["text"].decode() for e in examples], self.max_len)
    return {"image": np.stack([e["image"] for e in examples]),
            "input_ids": ids, "attention_mask": mask,
            "labels": np.stack([e["labels"] for e in examples]).astype(np.float32),
            "label_mask": np.stack([e["label_mask"] for e in examples]).astype(bool)}


@dataclasses.dataclass
class Dataset:
  splits: dict[str, ArraySplit | TfdsSplit]
  class_names: list[str]
  vocab_size: int
  name: str = ""                 # the built dataset's name (e.g. "retinamnist")
  task: str = "multilabel"

  @property
  def groups(self) -> dict[str, np.ndarray | None]:
    return {k: v.groups for k, v in self.splits.items()}


def make_tokenizer(data_cfg: ml_collections.ConfigDict):
  if data_cfg.tokenizer == "word":
    return WordTokenizer(synthetic.vocabulary())
  if data_cfg.tokenizer == "biogpt":
    if not data_cfg.tokenizer_path:
      raise BadInputError("data.tokenizer='biogpt' needs data.tokenizer_path (a converted "
                          "model directory, BioGPT's release folder or a hub id)")
    return BioGptTokenizer(data_cfg.tokenizer_path)
  raise BadInputError(f"data.tokenizer={data_cfg.tokenizer!r} is not one of ['word', 'biogpt']")


def _load_built(config: ml_collections.ConfigDict, tokenizer, path: str | None = None,
                part: bool = False) -> Dataset:
  """`part`: one dataset of a mixture, whose task and classes are its own (not data.task,
  model.num_classes)."""
  d = config.data
  ds = builder.load(path or d.path)
  meta, where = ds.info.metadata or {}, ds.data_dir
  lacking = [k for k in ("name", "task", "classes", "image_size") if k not in meta]
  if lacking:
    raise BadInputError(f"{where}: not a dataset built by data_prep (its metadata.json lacks "
                        f"{lacking})")
  if meta["task"] != d.task and not part:
    raise BadInputError(f"{where}: the data's task is {meta['task']!r} but data.task={d.task!r}")
  if meta["image_size"] != d.image_size:
    raise BadInputError(f"{where}: images were prepared at {meta['image_size']} px but "
                        f"data.image_size={d.image_size}")
  if len(meta["classes"]) != config.model.num_classes and not part:
    raise BadInputError(f"{where}: {len(meta['classes'])} classes but model.num_classes="
                        f"{config.model.num_classes}")
  splits = {name: TfdsSplit(ds, name, tokenizer, d.text_max_len) for name in ds.info.splits}
  return Dataset(splits, list(meta["classes"]), tokenizer.vocab_size, meta["name"],
                 meta["task"])


def _load_synthetic(config: ml_collections.ConfigDict, tokenizer, overrides=None,
                    part: bool = False) -> Dataset:
  d, s = config.data, config.data.synthetic.copy_and_resolve_references()
  s.update(overrides or {})
  if s.num_classes != config.model.num_classes and not part:
    raise BadInputError(f"the data has {s.num_classes} classes but model.num_classes="
                        f"{config.model.num_classes}")
  splits = {}
  for name, n in {"train": s.num_train, "val": s.num_val, "test": s.num_test}.items():
    split = synthetic.make_split(name, n, s.num_classes, d.image_size, s.seed,
                                 s.get("modality", 0), s.get("describe", False))
    ids, mask = tokenizer(split.texts, d.text_max_len)
    splits[name] = ArraySplit(dict(image=split.images, input_ids=ids, attention_mask=mask,
                                   labels=split.labels, label_mask=split.label_mask),
                              texts=split.texts)
  return Dataset(splits, synthetic.class_names(s.num_classes), tokenizer.vocab_size,
                 "synthetic", "multilabel")


@dataclasses.dataclass
class Mixture:
  """Several datasets for one model (`data.mixture`): a classifier head each, with its own
  task and classes; training batches mix them by weight (`data.mixture` in the config)."""
  parts: list[Dataset]
  weights: list[float]
  modality: list[int]            # each part's modality id; parts of one modality share it
  modality_names: list[str]

  @property
  def names(self) -> list[str]:
    return [p.name for p in self.parts]

  @property
  def heads(self) -> tuple[tuple[str, int], ...]:
    """((task, number of classes), ...) in part order: the model's heads."""
    return tuple((p.task, len(p.class_names)) for p in self.parts)

  @property
  def vocab_size(self) -> int:
    return self.parts[0].vocab_size

  def num_examples(self, split: str) -> int:
    return sum(len(p.splits[split]) for p in self.parts if split in p.splits)


MIXTURE_KEYS = ("path", "synthetic", "name", "weight", "modality")


def step_task(data, config):
  """What the train / eval steps take as `task`: data.task, or a mixture's heads."""
  return data.heads if isinstance(data, Mixture) else config.data.task


def _load_mixture(config: ml_collections.ConfigDict, tokenizer) -> Mixture:
  parts, weights, modality, names = [], [], [], []
  for i, entry in enumerate(config.data.mixture):
    where = f"data.mixture[{i}]"
    entry = dict(entry)
    unknown = sorted(set(entry) - set(MIXTURE_KEYS))
    if unknown or ("path" in entry) == ("synthetic" in entry):
      raise BadInputError(f"{where}={entry}: give 'path' (a built dataset) or 'synthetic' "
                          f"(overrides of data.synthetic), and only keys of {MIXTURE_KEYS}")
    weight = float(entry.get("weight", 1.0))
    if not weight > 0:
      raise BadInputError(f"{where}: weight {entry.get('weight')!r} must be > 0")
    unknown = sorted(set(entry.get("synthetic", {})) - set(config.data.synthetic))
    if unknown:
      raise BadInputError(f"{where}: synthetic has no key(s) {unknown} "
                          f"(data.synthetic has {sorted(config.data.synthetic)})")
    if "path" in entry:
      part = _load_built(config, tokenizer, entry["path"], part=True)
    else:
      part = _load_synthetic(config, tokenizer, entry["synthetic"], part=True)
    part.name = entry.get("name", part.name)
    if part.name in [p.name for p in parts]:
      raise BadInputError(f"{where}: a second dataset named {part.name!r}; give it a 'name'")
    lacking = {"train", "val"} - part.splits.keys()
    if lacking:
      raise BadInputError(f"{where} ({part.name}): no {sorted(lacking)} split")
    name = entry.get("modality", part.name)
    if name not in names:
      names.append(name)
    parts.append(part)
    weights.append(weight)
    modality.append(names.index(name))
  return Mixture(parts, weights, modality, names)


def load_dataset(config: ml_collections.ConfigDict) -> Dataset | Mixture:
  """The dataset of `data.name`, or with `data.mixture` the `Mixture` of its entries."""
  tokenizer = make_tokenizer(config.data)
  if config.data.get("mixture"):
    return _load_mixture(config, tokenizer)
  loaders = {"synthetic": _load_synthetic, "tfds": _load_built}
  if config.data.name not in loaders:
    raise BadInputError(f"data.name={config.data.name!r} is not one of {sorted(loaders)}")
  return loaders[config.data.name](config, tokenizer)


def augment(images: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
  """Random translation, brightness and contrast (and horizontal flips only if asked: in
  chest X-rays laterality matters). uint8 in, uint8 out."""
  out = np.empty_like(images)
  size = images.shape[1]
  shift = int(round(cfg.translate * size))
  for i, image in enumerate(images):
    if shift:
      padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode="edge")
      dy, dx = rng.integers(0, 2 * shift + 1, 2)
      image = padded[dy:dy + size, dx:dx + size]
    if cfg.hflip and rng.random() < 0.5:
      image = image[:, ::-1]
    x = image.astype(np.float32)
    contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    brightness = 255.0 * rng.uniform(-cfg.brightness, cfg.brightness)
    x = (x - x.mean()) * contrast + x.mean() + brightness
    out[i] = np.clip(x, 0, 255).astype(np.uint8)
  return out


def train_iterator(split, batch_size: int, seed: int, worker_count: int = 0,
                   rows: slice | None = None, augment_cfg=None) -> grain.DatasetIterator:
  """Global batches of shuffled indices (the same on every process); each process loads only
  its `rows` (see `sharding.process_rows`), so the global batch does not depend on the
  number of processes. Augmentation draws from a generator Grain derives from the seed and
  the batch number, so a resumed run augments exactly as an uninterrupted one."""
  n = len(split)
  if n < batch_size:
    raise BadInputError(f"the training split ({n}) is smaller than one batch ({batch_size})")
  rows = slice(None) if rows is None else rows
  use_augment = augment_cfg is not None and augment_cfg.enabled

  def load(index, rng):
    batch = split.gather(np.asarray(index)[rows])
    if use_augment:
      batch["image"] = augment(batch["image"], rng, augment_cfg)
    return batch

  return batched(grain.MapDataset.range(n).shuffle(seed=seed).repeat(None), batch_size, load,
                 seed, worker_count)


def batched(ds: grain.MapDataset, batch_size: int, load, seed: int,
            worker_count: int = 0) -> grain.DatasetIterator:
  """The endless stream of items `ds` as training batches: `load(items, rng)` per batch
  (seeded by the batch number, so resume is exact), in `worker_count` processes if > 0."""
  it = (ds.batch(batch_size, drop_remainder=True)
        .random_map(load, seed=seed)
        .to_iter_dataset())
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it)


def eval_batches(split, batch_size: int, rows: slice | None = None,
                 constants: dict[str, int] | None = None) -> Iterator[tuple[dict, np.ndarray]]:
  """(this process's rows, global valid mask) per fixed-size batch, in order; the last batch
  is padded by repeating its final row, and the rows carry their mask as batch['valid'] so
  that the model can keep padding out of routing. `constants`: int32 columns every row gets
  (a mixture part's `dataset` and `modality`)."""
  n = len(split)
  rows = slice(None) if rows is None else rows
  for start in range(0, n, batch_size):
    index = np.minimum(np.arange(start, start + batch_size), n - 1)[rows]
    valid = np.arange(start, start + batch_size) < n
    columns = {k: np.full(len(index), v, np.int32) for k, v in (constants or {}).items()}
    yield dict(split.gather(index), valid=valid[rows], **columns), valid
