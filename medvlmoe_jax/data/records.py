"""The project's record format: ArrayRecord shards of msgpack examples, plus manifest.json.

DIR/manifest.json                 name, task, classes, image_size, text_policy, splits
                                  (num_examples, files), skipped counts, source checksums
DIR/<split>-00000-of-000NN.array_record

An example is {"image": PNG bytes (uint8, grey or RGB, already image_size square),
"text": str, "labels": float32 (C,), "label_mask": bool (C,), "patient_id": str,
"example_id": str}. Grain reads the shards with `ArrayRecordDataSource`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
from flax import serialization
from PIL import Image

MANIFEST = "manifest.json"


def encode_image(image: np.ndarray) -> bytes:
  """uint8 (H, W) or (H, W, 1|3) -> PNG bytes (grey stays one channel: a third the size)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"images are stored as uint8, got {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 3 and image.shape[-1] == 3 and np.array_equal(image[..., 0], image[..., 1]) \
      and np.array_equal(image[..., 0], image[..., 2]):
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """PNG bytes -> uint8 (H, W, 3)."""
  image = np.asarray(Image.open(io.BytesIO(data)))
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return image


def encode_example(image: np.ndarray, text: str, labels, label_mask, patient_id: str = "",
                   example_id: str = "") -> bytes:
  return serialization.msgpack_serialize({
      "image": encode_image(image), "text": text,
      "labels": np.asarray(labels, np.float32), "label_mask": np.asarray(label_mask, bool),
      "patient_id": str(patient_id), "example_id": str(example_id)})


def decode_example(record: bytes) -> dict:
  return serialization.msgpack_restore(record)


def shard_names(split: str, num_shards: int) -> list[str]:
  return [f"{split}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def write_split(out_dir: str, split: str, records, num_examples: int,
                examples_per_shard: int = 2000) -> list[str]:
  """Writes an iterable of encoded examples, in order, into consecutive shards."""
  from array_record.python.array_record_module import ArrayRecordWriter
  os.makedirs(out_dir, exist_ok=True)
  num_shards = max(1, -(-num_examples // examples_per_shard))
  names = shard_names(split, num_shards)
  writers = [ArrayRecordWriter(os.path.join(out_dir, n), "group_size:1") for n in names]
  count = 0
  try:
    for i, record in enumerate(records):
      writers[min(i // examples_per_shard, num_shards - 1)].write(record)
      count += 1
  finally:
    for w in writers:
      w.close()
  if count != num_examples:
    raise RuntimeError(f"{split}: wrote {count} examples, expected {num_examples}")
  return names


def file_checksum(path: str) -> str:
  md5 = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      md5.update(chunk)
  return md5.hexdigest()


def write_manifest(out_dir: str, manifest: dict) -> None:
  tmp = os.path.join(out_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, MANIFEST))


def read_manifest(data_dir: str) -> dict:
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path={data_dir!r}: no {MANIFEST} (run the data_prep script first)")
  with open(path) as f:
    return json.load(f)
