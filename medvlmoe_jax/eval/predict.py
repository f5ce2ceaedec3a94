"""Predict one image (+ optional clinical sentence) with a trained workdir's checkpoint.

Only the model parameters are restored (an Orbax partial restore of the train state), so
neither the dataset nor the optimizer is built: a prediction needs the workdir alone (plus the
tokenizer files for BioGPT runs, and the built dataset's metadata for the class names of a
`tfds` run).

A file that cannot be read (missing, empty, truncated, not an image) is a BadInputError naming
its path. An image whose shorter side is under a quarter of the model's input side (e.g. a
1x1 or a 40 px thumbnail for a 224 px model) is still classified, as resizing makes it fit, but
with a warning: upsampled 4x or more it holds little of what the model was trained to see.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import builder, pipeline, synthetic
from medvlmoe_jax.data.preprocess import load_image, resize_and_crop
from medvlmoe_jax.eval.run import load_config, resolve_step
from medvlmoe_jax.models.medvlmoe import abstract_model
from medvlmoe_jax.train import losses
from medvlmoe_jax.train.checkpointing import Checkpointer
from medvlmoe_jax.train.step import forward

log = logging.getLogger(__name__)

# An empty text would give an all-padding mask, which the text stream cannot pool (its
# sentence token is the last unmasked position). This sentence states that nothing is known;
# under the demo's word tokenizer "clinical" and "information" are out of vocabulary (<unk>),
# which is as uninformative as a sentence can be while still having tokens.
DEFAULT_TEXT = "no clinical information ."

DICOM_SUFFIXES = (".dcm", ".dicom")
SMALL_FRACTION = 4   # warn below 1/4 of the input side


def _is_dicom(path: str) -> bool:
  if path.lower().endswith(DICOM_SUFFIXES):
    return True
  try:
    with open(path, "rb") as f:
      return f.read(132)[128:] == b"DICM"   # the Part 10 preamble is 128 bytes, then 'DICM'
  except OSError:
    return False


def load_dicom(path: str) -> np.ndarray:
  """DICOM -> (H, W, 3) uint8 RGB, windowed as the file says (modality LUT, then VOI LUT or
  window centre/width, else the full range), MONOCHROME1 inverted so that bone is bright as
  in the JPEG/PNG exports the models are trained on: an approximation of such an export."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such image file")
  try:
    import pydicom
  except ImportError:
    raise ImportError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from None
  try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut           # pydicom >= 3
  except ImportError:
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
  try:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
  except Exception as e:   # pydicom raises many types for corrupt or unsupported files
    raise BadInputError(f"{path}: not a readable DICOM image ({e})") from e
  photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
  if pixels.ndim == 3 and pixels.shape[-1] == 3:
    if pixels.dtype != np.uint8:
      raise BadInputError(f"{path}: colour DICOM with {pixels.dtype} samples is not supported")
    return np.ascontiguousarray(pixels)
  if pixels.ndim != 2:
    raise BadInputError(f"{path}: expected one greyscale frame, got pixel data of shape "
                        f"{pixels.shape}")
  # Rescale slope/intercept first: a CT's window centre/width is in Hounsfield units.
  x = np.asarray(apply_voi_lut(apply_modality_lut(pixels, ds), ds), np.float64)
  lo, hi = float(x.min()), float(x.max())
  x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
  if photometric == "MONOCHROME1":
    x = 1.0 - x
  grey = np.round(x * 255).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def read_image(path: str) -> np.ndarray:
  """PNG/JPEG via `load_image`; DICOM (by suffix or its 'DICM' magic) via pydicom."""
  path = os.fspath(path)
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise BadInputError(f"{path}: empty file (0 bytes), not an image")
  if _is_dicom(path):
    return load_dicom(path)
  try:
    return load_image(path)
  except FileNotFoundError:
    raise
  except ValueError as e:   # load_image's only ValueError: the file does not decode
    raise BadInputError(str(e)) from e


def warn_if_small(image: np.ndarray, size: int, where: str) -> None:
  if image.ndim < 2:
    return   # resize_and_crop names the shape
  h, w = image.shape[:2]
  if min(h, w) * SMALL_FRACTION < size:
    log.warning("%s: %dx%d px is far below the model's %d px input (under 1/%d of its side); "
                "upsampled this much it holds little to classify", where, w, h, size,
                SMALL_FRACTION)


def class_names(config) -> list[str]:
  """The names the training run's dataset gave its classes, without loading the data."""
  d, n = config.data, config.model.num_classes
  if d.name == "synthetic":
    return synthetic.class_names(n)
  try:
    names = list(builder.load(d.path).info.metadata["classes"])
    if len(names) == n:
      return names
  except (OSError, KeyError, TypeError, ValueError) as e:
    log.warning("no class names from data.path=%r (%s); using class_<k>", d.path, e)
  return [f"class_{k}" for k in range(n)]


class Predictor:
  """One trained model, ready to classify single examples."""

  def __init__(self, config, graphdef, params, names: list[str], step: int | None = None):
    self.config, self.graphdef, self.params = config, graphdef, params
    self.class_names, self.step = list(names), step
    self.tokenizer = pipeline.make_tokenizer(config.data)
    task = config.data.task

    def run(params, batch):
      logits, aux = forward(graphdef, params, batch)
      keep = {k: aux[k] for k in ("expert_index", "expert_weights", "gate") if k in aux}
      return losses.probabilities(logits, task), keep
    self._run = jax.jit(run)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = "best") -> "Predictor":
    config = load_config(workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
      step = resolve_step(ckpt, str(checkpoint))
      # Shapes only: the checkpoint provides every value.
      _, graphdef, abstract = abstract_model(config.model, config.seed)
      params = ckpt.restore_params(step, abstract)
    finally:
      ckpt.close()
    return cls(config, graphdef, params, class_names(config), step)

  def batch(self, image, text: str | None = None) -> dict:
    """A batch of one (uint8 pixels, tokens), exactly as the eval pipeline would feed it."""
    where = "the image"
    if isinstance(image, (str, os.PathLike)):
      where, image = os.fspath(image), read_image(image)
    warn_if_small(np.asarray(image), self.config.data.image_size, where)
    image = resize_and_crop(image, self.config.data.image_size)
    ids, mask = self.tokenizer([DEFAULT_TEXT if text is None else text],
                               self.config.data.text_max_len)
    if not mask.any():
      raise BadInputError(f"the text {text!r} has no tokens; omit it to use {DEFAULT_TEXT!r}")
    return {"image": image[None], "input_ids": ids, "attention_mask": mask}

  def predict(self, image, text: str | None = None) -> dict:
    """`image`: a path (PNG, JPEG, DICOM) or a uint8 (H, W[, 3]) array; `text`: the clinical
    sentence, `DEFAULT_TEXT` when None."""
    probs, aux = jax.device_get(self._run(self.params, self.batch(image, text)))
    out = {"probabilities": {n: float(p) for n, p in zip(self.class_names, probs[0])},
           "text": DEFAULT_TEXT if text is None else text,
           "checkpoint_step": self.step, "experts": self._experts(aux), "gate": None}
    if "gate" in aux:
      g = np.asarray(aux["gate"][0], np.float64)
      half = g.shape[0] // 2   # 'modality': one value per stream; 'feature': channel means
      out["gate"] = {"mode": self.config.model.fusion.gate,
                     "vision": float(g[:half].mean()), "text": float(g[half:].mean())}
    return out

  def _experts(self, aux):
    moe = self.config.model.moe
    if self.config.model.vision_only or not moe.enabled:
      return "no MoE layer"
    if moe.granularity != "sample" or "expert_index" not in aux:
      return "per-token routing"
    return [{"id": int(i), "weight": float(w)}
            for i, w in zip(aux["expert_index"][0], aux["expert_weights"][0])]
