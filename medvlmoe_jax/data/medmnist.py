"""MedMNIST v2 (any 2D set, 28 / 64 / 128 / 224 px) from its official `.npz`, as a TFDS builder
whose config is the set's name.

The file is checked against `medmnist.INFO` (split sizes, md5 of the file at its size): a
difference is an error unless accepted explicitly (`accept_mismatch`), and an accepted
difference is recorded in the dataset's metadata. Images are uint8; float images in [0, 1]
are scaled to 0..255 and the conversion is recorded, and anything a cast would silently turn
into black or wrapped pixels or truncated labels is an error naming the file, key and row. The
text is one modality sentence per set, never the label; the official train / val / test splits
are kept (MedMNIST has no patient ids).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.data.builder import Builder, Example
from medvlmoe_jax.data.sources import BadInputError, md5

SETS = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
        "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
# What a clinician knows before looking: the imaging modality, never the label.
MODALITY_SENTENCE = {
    "pathmnist": "a haematoxylin and eosin stained colorectal tissue patch .",
    "chestmnist": "a frontal chest x - ray .",
    "dermamnist": "a dermatoscopic image of a skin lesion .",
    "octmnist": "an optical coherence tomography scan of the retina .",
    "pneumoniamnist": "a paediatric frontal chest x - ray .",
    "retinamnist": "a colour fundus photograph of the retina .",
    "breastmnist": "a breast ultrasound image .",
    "bloodmnist": "a microscopic image of a blood cell .",
    "tissuemnist": "a microscopic image of kidney cortex cells .",
    "organamnist": "an axial abdominal computed tomography slice .",
    "organcmnist": "a coronal abdominal computed tomography slice .",
    "organsmnist": "a sagittal abdominal computed tomography slice .",
}
SPLITS = ("train", "val", "test")
# medmnist.INFO task names -> ours.
TASKS = {"multi-class": "multiclass", "ordinal-regression": "ordinal",
         "multi-label, binary-class": "multilabel", "binary-class": "multiclass"}


def info(name: str) -> dict:
  """The set's task, class names, split sizes and md5s, from the `medmnist` package."""
  import medmnist as _medmnist   # installed with --no-deps (see README)
  if name not in _medmnist.INFO:
    raise BadInputError(f"{name!r} is not a MedMNIST dataset ({', '.join(SETS)})")
  i = _medmnist.INFO[name]
  return {"task": TASKS[i["task"]], "classes": [i["label"][k] for k in sorted(i["label"], key=int)],
          "n_samples": i["n_samples"], "md5": {k: v for k, v in i.items() if k.startswith("MD5")},
          "url": i["url"]}


def name_and_size(path: str) -> tuple[str, int]:
  """'retinamnist_224.npz' -> ('retinamnist', 224); 'retinamnist.npz' -> ('retinamnist', 28)."""
  stem = os.path.basename(path).rsplit(".", 1)[0]
  name, _, size = stem.partition("_")
  return name, int(size) if size.isdigit() else 28


def read_npz(path: str, name: str) -> dict:
  """{split: (images uint8 (N, H, W[, 3]), labels (N, C) float32)} checked against the set's
  classes and task; returns also the differences from medmnist.INFO and the conversions made."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such MedMNIST .npz file")
  try:
    npz = np.load(path)
  except Exception as e:  # noqa: BLE001 - re-raised with the file name
    raise BadInputError(f"{path}: not a readable .npz file ({e})") from e
  meta = info(name)
  splits, differences, conversions = {}, [], []
  for split in SPLITS:
    key_x, key_y = f"{split}_images", f"{split}_labels"
    for key in (key_x, key_y):
      if key not in npz:
        raise BadInputError(f"{path}: no array {key!r} (has {sorted(npz.keys())})")
    try:
      x, y = npz[key_x], npz[key_y]
    except ValueError as e:   # object arrays: they need pickle, which no data file should
      raise BadInputError(f"{path}: {key_x} / {key_y} cannot be read ({e})") from e
    images, labels, conversion = _validated(path, split, x, y, meta)
    conversions += [conversion] if conversion else []
    if len(images) != meta["n_samples"][split]:
      differences.append(f"{split} has {len(images)} examples, medmnist.INFO says "
                         f"{meta['n_samples'][split]}")
    splits[split] = (images, labels)
  size = name_and_size(path)[1]
  expected = meta["md5"].get("MD5" if size == 28 else f"MD5_{size}")
  digest = md5(path)
  if digest != expected:
    differences.append(f"md5 {digest}, medmnist.INFO says {expected} for {size} px")
  return {**meta, "splits": splits, "differences": differences, "conversions": conversions,
          "file_md5": digest, "size": size}


def _validated(path: str, split: str, x: np.ndarray, y: np.ndarray,
               meta: dict) -> tuple[np.ndarray, np.ndarray, str]:
  """(uint8 images, (N, C) float32 labels, the conversion made or ''). A cast would turn float
  images black, wrap integers and truncate fractional labels without a word, so only float
  images in [0, 1] are converted (x * 255, rounded); any other surprise is a BadInputError."""
  kx, ky = f"{split}_images", f"{split}_labels"
  classes = meta["classes"]
  if x.ndim not in (3, 4) or x.ndim == 4 and x.shape[-1] != 3:
    raise BadInputError(f"{path}: {kx} has shape {x.shape}; expected (N, H, W) or (N, H, W, 3)")
  if x.dtype.kind not in "uif":
    raise BadInputError(f"{path}: {kx} has dtype {x.dtype}; expected uint8, integers in 0..255 "
                        "or floats in [0, 1]")
  if y.dtype.kind not in "biuf":
    raise BadInputError(f"{path}: {ky} has dtype {y.dtype}; expected numbers")
  multilabel = meta["task"] == "multilabel"
  width = len(classes) if multilabel else 1
  if y.ndim not in (1, 2) or (y.shape[1] if y.ndim == 2 else 1) != width:
    raise BadInputError(f"{path}: {ky} has shape {y.shape}; a {meta['task']} set of "
                        f"{len(classes)} classes has labels of shape (N, {width})")
  if len(x) != len(y):
    raise BadInputError(f"{path}: split {split} has {len(x)} images but {len(y)} labels "
                        f"({kx}, {ky})")
  conversion = ""
  if x.dtype != np.uint8:
    floats = x.dtype.kind == "f"
    if floats and not np.isfinite(x).all():
      raise BadInputError(f"{path}: {kx} has NaN or inf values")
    lo, hi = (x.min(), x.max()) if x.size else (0, 0)
    if lo < 0 or hi > (1 if floats else 255):
      raise BadInputError(f"{path}: {kx} has {x.dtype} values {lo}..{hi}, outside "
                          f"{'[0, 1]' if floats else '0..255'}")
    if floats:
      conversion = f"{kx}: float in [0, 1], scaled to 0..255 (x * 255, rounded)"
    x = (np.rint(x * 255) if floats else x).astype(np.uint8)
  y = y.reshape(len(y), width).astype(np.float64)
  if multilabel:
    for r, c in zip(*np.nonzero(~np.isin(y, (0, 1)))):
      raise BadInputError(f"{path}: {ky} row {r} has {y[r, c]:g} for {classes[c]!r}; "
                          "multilabel labels are 0 / 1")
    return x, y.astype(np.float32), conversion
  v = y[:, 0]
  for r in np.nonzero(v != np.round(v))[0]:   # NaN too
    raise BadInputError(f"{path}: {ky} row {r} has label {v[r]:g}: not an integer class index")
  for r in np.nonzero((v < 0) | (v >= len(classes)))[0]:
    raise BadInputError(f"{path}: {ky} row {r} has label {v[r]:g} outside "
                        f"0..{len(classes) - 1}")
  return x, np.eye(len(classes), dtype=np.float32)[v.astype(np.int64)], conversion


def check(path: str, name: str | None = None, accept_mismatch: bool = False) -> str:
  """What `--check` prints: task, classes, size, md5 and per-class counts per split."""
  name = name or name_and_size(path)[0]
  data = read_npz(path, name)
  _refuse(path, data["differences"], accept_mismatch)
  lines = [f"{name}: task {data['task']}, {len(data['classes'])} classes {data['classes']}, "
           f"native size {data['size']} px, md5 {data['file_md5']} "
           f"({'DOES NOT match' if data['differences'] else 'matches'} medmnist.INFO)"]
  for split, (images, labels) in data["splits"].items():
    lines.append(f"  {split:<5} {len(images):>7,} examples, per class "
                 f"{labels.sum(0).astype(int).tolist()}")
  lines += [f"  converted: {c}" for c in data["conversions"]]
  return "\n".join(lines)


def _refuse(path: str, differences: list[str], accept: bool) -> None:
  if differences and not accept:
    raise BadInputError(f"{path}: {'; '.join(differences)} (--accept_mismatch builds it anyway "
                        "and records the difference in the dataset's metadata)")


class MedMNIST(Builder):
  """MedMNIST v2, one builder config per 2D set."""

  name = "medmnist"

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Official train / val / test splits of the .npz, one modality "
                            "sentence per set as the text."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=s, description=MODALITY_SENTENCE[s])
                     for s in SETS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the set's official file from Zenodo (https://zenodo.org/records/10519652):
  `<name>.npz` for 28 px or `<name>_{64,128,224}.npz`, e.g. retinamnist.npz, and pass its
  path as --src (the name and size are read from the file name; --name overrides the name).
  `python -m medmnist save --flag=<name>` also fetches it."""
  HOMEPAGE = "https://medmnist.com/"
  CITATION = """\
@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister, Hanspeter and Ni, Bingbing},
  journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}}"""
  DESCRIPTION = "MedMNIST v2 2D sets: small standardised biomedical images."

  def __init__(self, *, config: str, accept_mismatch: bool = False, **kwargs):
    meta = info(config)   # before TFDS builds the info from TASK and the classes
    self.TASK, self.CLASSES = meta["task"], tuple(meta["classes"])
    self.TEXT_POLICY = f"one modality sentence for every image: {MODALITY_SENTENCE[config]!r}"
    self.accept_mismatch = accept_mismatch
    super().__init__(config=config, **kwargs)

  def metadata(self) -> dict:
    return {"name": self.builder_config.name}   # runs and reports name the set

  def source_files(self, src: str) -> list[str]:
    return [src]

  def read(self, src: str) -> dict[str, list[Example]]:
    name = self.builder_config.name
    data = read_npz(src, name)
    _refuse(src, data["differences"], self.accept_mismatch)
    self.info.metadata["differences_from_medmnist_info"] = data["differences"]
    self.info.metadata["conversions"] = data["conversions"]
    sentence = MODALITY_SENTENCE[name]
    out = {}
    for split, (images, labels) in data["splits"].items():
      mask = np.ones(labels.shape[1], bool)
      out[split] = [Example(key=f"{split}-{i}", where=f"{src}, {split}_images[{i}]",
                            image=images[i], text=sentence, labels=labels[i], label_mask=mask)
                    for i in range(len(images))]
    return out
