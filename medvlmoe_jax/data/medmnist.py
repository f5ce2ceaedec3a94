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
