"""MedMNIST 2D sets from their official `.npz` (train/val/test images and labels)."""

from __future__ import annotations

import os

import numpy as np

from medvlmoe_jax.data.splits import Split

# What a clinician knows before looking: the imaging modality, never the label.
MODALITY_SENTENCE = {
    "retinamnist": "a colour fundus photograph of the retina .",
    "pathmnist": "a haematoxylin and eosin stained colorectal tissue patch .",
    "chestmnist": "a frontal chest x - ray .",
    "dermamnist": "a dermatoscopic image of a skin lesion .",
    "bloodmnist": "a microscopic image of a blood cell .",
}


def load_npz(path: str, name: str, task: str, num_classes: int) -> dict[str, Split]:
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"data.path={path!r}: no such MedMNIST .npz file")
  try:
    npz = np.load(path)
  except Exception as e:  # noqa: BLE001 - re-raised with the file name
    raise ValueError(f"{path}: not a readable .npz file ({e})") from e
  sentence = MODALITY_SENTENCE.get(name, "a medical image .")
  splits = {}
  for split in ("train", "val", "test"):
    key_x, key_y = f"{split}_images", f"{split}_labels"
    if key_x not in npz or key_y not in npz:
      raise KeyError(f"{path}: missing array {key_x!r} or {key_y!r}")
    images = npz[key_x]
    if images.ndim == 3:
      images = np.repeat(images[..., None], 3, axis=-1)
    y = npz[key_y].astype(np.int64)
    if task == "multilabel":
      labels = y.astype(np.float32)
    else:
      y = y.reshape(-1)
      if y.min() < 0 or y.max() >= num_classes:
        bad = int(np.nonzero((y < 0) | (y >= num_classes))[0][0])
        raise ValueError(f"{path}: {key_y} row {bad} has label {y[bad]} outside 0..{num_classes - 1}")
      labels = np.eye(num_classes, dtype=np.float32)[y]
    splits[split] = Split(images=images.astype(np.uint8), texts=[sentence] * len(images),
                          labels=labels, label_mask=np.ones_like(labels, dtype=bool))
  return splits


# medmnist.INFO task names -> ours.
TASKS = {"multi-class": "multiclass", "ordinal-regression": "ordinal",
         "multi-label, binary-class": "multilabel", "binary-class": "multiclass"}


def dataset_name(path: str) -> tuple[str, int]:
  """'retinamnist_224.npz' -> ('retinamnist', 224); 'retinamnist.npz' -> ('retinamnist', 28)."""
  stem = os.path.basename(path).rsplit(".", 1)[0]
  name, _, size = stem.partition("_")
  return name, int(size) if size.isdigit() else 28


def info(name: str) -> dict:
  import medmnist as _medmnist   # installed with --no-deps (see README)
  if name not in _medmnist.INFO:
    raise ValueError(f"{name!r} is not a MedMNIST dataset ({sorted(_medmnist.INFO)})")
  i = _medmnist.INFO[name]
  return {"task": TASKS[i["task"]], "classes": [i["label"][k] for k in sorted(i["label"], key=int)],
          "n_samples": i["n_samples"], "md5": i}


def check(path: str, name: str | None = None) -> dict:
  from medvlmoe_jax.data.records import file_checksum
  name, size = dataset_name(path) if name is None else (name, dataset_name(path)[1])
  meta = info(name)
  task = meta["task"]
  splits = load_npz(path, name, task, len(meta["classes"]))
  md5_key = "MD5" if size == 28 else f"MD5_{size}"
  md5 = file_checksum(path)
  stats = {"name": name, "task": task, "classes": meta["classes"], "native_size": size,
           "md5": md5, "md5_matches_medmnist": md5 == meta["md5"].get(md5_key),
           "splits": {}}
  for split, s in splits.items():
    expected = meta["n_samples"][split]
    if len(s) != expected:
      raise ValueError(f"{path}: {split} has {len(s)} examples, medmnist.INFO says {expected}")
    stats["splits"][split] = {"num_examples": len(s),
                              "per_class": s.labels.sum(0).astype(int).tolist()}
  return stats


def prepare(path: str, out: str, image_size: int | None = None, name: str | None = None) -> dict:
  """Writes the .npz as records (+ manifest.json); images resized (bicubic) if asked."""
  from medvlmoe_jax.data import records
  from medvlmoe_jax.data.preprocess import resize_and_crop
  stats = check(path, name)
  name, task, classes = stats["name"], stats["task"], stats["classes"]
  image_size = image_size or stats["native_size"]
  splits = load_npz(path, name, task, len(classes))
  manifest = {"name": name, "task": task, "classes": classes, "image_size": image_size,
              "text_policy": f"one modality sentence for every image: {MODALITY_SENTENCE.get(name, 'a medical image .')!r}",
              "splits": {}, "skipped": {"counts": {}, "examples": {}},
              "source_checksums": {os.path.basename(path): stats["md5"]}}
  for split, s in splits.items():
    def examples(s=s, split=split):
      for i in range(len(s)):
        image = s.images[i] if image_size == s.images.shape[1] else resize_and_crop(s.images[i], image_size)
        yield records.encode_example(image, s.texts[i], s.labels[i], s.label_mask[i],
                                     patient_id="", example_id=f"{split}-{i}")
    files = records.write_split(out, split, examples(), len(s))
    manifest["splits"][split] = {"num_examples": len(s), "files": files}
  records.write_manifest(out, manifest)
  return manifest
