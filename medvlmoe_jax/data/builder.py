"""One TFDS builder under every dataset: array_record files, no TensorFlow.

A dataset adapter subclasses `Builder` with its classes, task, text policy, documentation and
`read(src) -> {split: [Example]}`; the base class decodes and resizes the images in threads
(`sources.ordered_map`), applies the bad-input policy (`sources.Problems`) and writes the
examples through TFDS, in source order. What TFDS would do with TensorFlow is avoided: images
reach the Image feature as PNG bytes (a NumPy array would be encoded with tf.image), the file
format is array_record (the default tfrecord needs TensorFlow), and datasets are read with
`as_data_source`, never `as_dataset`.

`build(cls, out, ...)` leaves a finished dataset directly in `out` (`dataset_info.json`,
`features.json`, `metadata.json` and the array_record shards), so that
`tfds.builder_from_directory(out)` opens it; a build that fails leaves `out` as it was.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from medvlmoe_jax.data.preprocess import load_image, resize_and_crop
from medvlmoe_jax.data.sources import BadInputError, Problems, checksums, ordered_map

DATASET_INFO = "dataset_info.json"


@dataclasses.dataclass
class Example:
  """One example as the adapter read it; the image is decoded only when it is written."""
  key: str                      # unique in the split: the source's own id of the image
  where: str                    # "file, row N", for errors
  image: str | np.ndarray       # an image file, or uint8 pixels (H, W[, 1|3])
  text: str
  labels: np.ndarray            # (C,) float32 (one-hot for multiclass / ordinal tasks)
  label_mask: np.ndarray        # (C,) bool, False where a label is unknown or uncertain
  patient_id: str = ""
  extra: dict = dataclasses.field(default_factory=dict)   # the builder's EXTRA features


def to_png(image: np.ndarray) -> bytes:
  """uint8 pixels -> PNG bytes; grey (or R = G = B) stays one channel, a third the size."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) \
      and np.array_equal(image[..., 0], image[..., 2]):
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def encode_image(image: str | np.ndarray, size: int) -> bytes:
  """A file or uint8 pixels -> PNG bytes of the CLIP geometry (shortest edge to `size`,
  centre crop); pixels already `size` square are stored as they are."""
  if isinstance(image, str):
    image = load_image(image)
  elif image.dtype != np.uint8:
    raise ValueError(f"images are stored as uint8, got {image.dtype}")
  if image.shape[0] != size or image.shape[1] != size:
    image = resize_and_crop(image, size)
  return to_png(image)


def decoded(fn, examples: list[Example], problems: Problems, num_workers: int | None = None):
  """(example, fn(example) or None) in order, fn run in threads; a missing or unreadable image
  is reported (an error naming the example's file and row, or a counted skip)."""
  def attempt(ex: Example):
    try:
      return fn(ex), None
    except FileNotFoundError as e:
      return None, ("missing_image", str(e))
    except ValueError as e:
      return None, ("unreadable_image", str(e))

  for ex, (result, error) in zip(examples, ordered_map(attempt, examples, num_workers)):
    if error:
      problems.report(error[0], ex.where, error[1])
    yield ex, result


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The features and the writing every dataset shares; see the module docstring."""

  CLASSES: tuple[str, ...] = ()
  TASK = "multilabel"                   # multilabel | multiclass | ordinal
  TEXT_POLICY = ""
  HOMEPAGE = ""
  CITATION = ""
  DESCRIPTION = ""
  EXTRA: dict = {}                      # name -> feature, e.g. {"view": tfds.features.Text()}

  def __init__(self, *, src: str | None = None, image_size: int = 224, skip_bad: bool = False,
               num_workers: int | None = None, **kwargs):
    self.src, self.image_size, self.num_workers = src, image_size, num_workers
    self.problems = Problems(skip_bad)
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    num_classes = len(self.CLASSES)
    features = {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "text": tfds.features.Text(),
        "labels": tfds.features.Tensor(shape=(num_classes,), dtype=np.float32),
        "label_mask": tfds.features.Tensor(shape=(num_classes,), dtype=np.bool_),
        "patient_id": tfds.features.Text(),
        "example_id": tfds.features.Text(),
        **self.EXTRA}
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE, citation=self.CITATION, metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)   # source order: the split lists' order, reproducible

  def read(self, src: str) -> dict[str, list[Example]]:
    """The adapter's part: the source, validated, as examples per split."""
    raise NotImplementedError

  def source_files(self, src: str) -> list[str]:
    """The files whose checksums go into the metadata."""
    return []

  def metadata(self) -> dict:
    """Dataset-specific metadata (split policy, uncertainty policy, ...; MedMNIST's `name`)."""
    return {}

  def _split_generators(self, dl_manager):
    src = self.src
    if src is None and self.MANUAL_DOWNLOAD_INSTRUCTIONS:   # tfds's own --manual_dir
      src = os.fspath(dl_manager.manual_dir)
    splits = self.read(src)
    self.info.metadata.update({
        "name": self.name, "task": self.TASK, "classes": list(self.CLASSES),
        "image_size": self.image_size, "text_policy": self.TEXT_POLICY,
        "source_checksums": checksums(self.source_files(src)), "patients": {},
        **self.metadata()})
    return {name: self._generate_examples(name, examples) for name, examples in splits.items()}

  def _generate_examples(self, split: str, examples: list[Example]):
    patients = set()
    encode = lambda ex: encode_image(ex.image, self.image_size)   # noqa: E731
    for ex, png in decoded(encode, examples, self.problems, self.num_workers):
      if png is None:
        continue
      patients.add(ex.patient_id)
      yield ex.key, {"image": png, "text": ex.text, "labels": np.asarray(ex.labels, np.float32),
                     "label_mask": np.asarray(ex.label_mask, bool), "patient_id": ex.patient_id,
                     "example_id": ex.key, **ex.extra}
    if not patients:   # TFDS cannot write an empty split; say why in one line
      raise BadInputError(f"split {split!r}: every one of its {len(examples)} examples was "
                          f"skipped as bad input ({self.problems.summary()['counts']})")
    # Runs when the split is exhausted, before TFDS writes dataset_info / metadata.
    self.info.metadata["patients"][split] = len(patients - {""})
    self.info.metadata["skipped"] = self.problems.summary()


def build(cls: type[Builder], out: str, **kwargs) -> Builder:
  """Builds `cls(**kwargs)` in a staging folder next to `out`, then moves the finished dataset
  to `out` (replacing an earlier build there, never anything else). Returns the builder."""
  out = os.path.abspath(out)
  replaceable = os.path.isdir(out) and (not os.listdir(out) or
                                        os.path.exists(os.path.join(out, DATASET_INFO)))
  if os.path.exists(out) and not replaceable:
    raise FileExistsError(f"--out {out}: exists and is not a built dataset; not overwriting it")
  staging = out + ".building"
  shutil.rmtree(staging, ignore_errors=True)    # left by a run that was killed
  try:
    builder = cls(data_dir=staging, **kwargs)
    src = builder.src
    manual = src if src is None or os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    builder.download_and_prepare(
        download_dir=os.path.join(staging, "downloads"),
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
    old = out + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
      os.replace(out, old)
    os.replace(os.fspath(builder.data_dir), out)
    shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return builder


def resolve(path: str) -> str:
  """The directory of a built dataset: `path` itself, or the one dataset TFDS's own layout
  (name/[config/]version) holds under it."""
  if not path or not os.path.isdir(path):
    raise FileNotFoundError(f"data.path={path!r}: no such directory (build the dataset with "
                            "the data_prep script first)")
  if os.path.exists(os.path.join(path, DATASET_INFO)):
    return path
  found = sorted(root for root, _, files in os.walk(path) if DATASET_INFO in files
                 and root.count(os.sep) - path.rstrip(os.sep).count(os.sep) <= 3)
  if len(found) != 1:
    raise FileNotFoundError(
        f"data.path={path!r}: " + ("holds no built dataset (no dataset_info.json; build it "
                                   "with the data_prep script)" if not found else
                                   f"holds {len(found)} built datasets {found}; name one"))
  return found[0]


def load(path: str) -> tfds.core.DatasetBuilder:
  """The built dataset at `path` (see `resolve`), read-only, as TFDS opens it."""
  return tfds.builder_from_directory(resolve(path))
