"""CLIP image preprocessing (openai/clip-vit-large-patch14) with PIL and NumPy only.

`clip_preprocess` reproduces, bit for bit, the PIL backend of Hugging Face's CLIP image
processor: `CLIPImageProcessorPil` in transformers 5 (the class `CLIPImageProcessor` resolves
to when torchvision is absent) and the slow `CLIPImageProcessor` of transformers 4. The
torchvision backend (the transformers 5 default when torchvision is installed) resizes with
torch's antialiased bicubic instead of PIL's, so it need not match to the bit; it is not the
reference here. Unlike HF, the output is NHWC-ready (H, W, 3), not (3, H, W).
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageOps

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# HF multiplies by the Python float 1/255 in float64, then casts to float32; the same
# arithmetic here makes the match exact by construction, not by luck of rounding.
_RESCALE = 1 / 255

# PNG stores 16-bit greyscale as one of these; PIL's own conversion to 'L'/'RGB' clips
# every value above 255 to white, so they are rescaled here instead.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(img: Image.Image) -> Image.Image:
  """Any PIL mode -> 8-bit RGB; 8-bit and alpha modes exactly as HF's `convert_to_rgb`."""
  if img.mode in _WIDE_INT_MODES:
    # Full 16-bit range onto 0..255: a fixed map, so intensities stay comparable across
    # images (no per-image windowing).
    wide = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
    img = Image.fromarray(np.round(wide * (255 / 65535)).astype(np.uint8), mode="L")
  elif img.mode == "F":
    raise ValueError(f"floating-point image mode {img.mode!r} has no defined 8-bit range")
  if "A" in img.getbands() or img.info.get("transparency") is not None:
    # HF composites transparency onto white, not black.
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return img.convert("RGB")


def load_image(path: str) -> np.ndarray:
  """Read a PNG/JPEG as (H, W, 3) uint8 RGB, upright per its EXIF orientation."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such image file")
  try:
    with Image.open(path) as img:
      img.load()  # decode now so truncated or corrupt data fails here, naming the file
      img = ImageOps.exif_transpose(img)
      rgb = _to_rgb(img)
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from e
  return np.asarray(rgb, dtype=np.uint8)


def _resized_hw(height: int, width: int, size: int) -> tuple[int, int]:
  """Shortest edge -> `size`; the long edge is truncated (int), as in HF, not rounded."""
  if width <= height:
    return int(size * height / width), size
  return size, int(size * width / height)


def _center_crop(image: np.ndarray, crop: int) -> np.ndarray:
  """Crop with floor offsets; pad with zeros (top/left getting the extra pixel) when too small."""
  h, w = image.shape[:2]
  if h < crop or w < crop:
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    top, left = math.ceil(ph / 2), math.ceil(pw / 2)
    image = np.pad(image, ((top, ph - top), (left, pw - left), (0, 0)))
    h, w = image.shape[:2]
  top, left = (h - crop) // 2, (w - crop) // 2
  return image[top:top + crop, left:left + crop]


def resize_and_crop(image: np.ndarray, size: int = 224, crop: int | None = None) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (crop, crop, 3): CLIP's geometry without the normalisation.

  data_prep stores images this way, and batches carry them so (uint8); the model's
  normalisation on the device then gives exactly `clip_preprocess` of the original image.
  """
  crop = size if crop is None else crop
  image = _as_rgb_uint8(image)
  new_h, new_w = _resized_hw(image.shape[0], image.shape[1], size)
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BICUBIC))
  return _center_crop(resized, crop)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    # HF would guess a range for other dtypes; callers should decide it explicitly.
    raise TypeError(f"expected a uint8 image, got dtype {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"expected (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 (..., 3), HF's rescale and normalisation."""
  x = (np.asarray(pixels).astype(np.float64) * _RESCALE).astype(np.float32)
  return (x - CLIP_MEAN) / CLIP_STD


# `normalize` of every uint8 value, per channel: the model normalises stored pixels on the
# device by looking them up here, bit for bit as above (XLA would turn x / 255 into
# x * (1 / 255), which differs in the last bit for most values).
CLIP_TABLE = normalize(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def clip_preprocess(image: np.ndarray, size: int = 224, crop: int = 224) -> np.ndarray:
  """uint8 (H, W, 3) or greyscale (H, W) / (H, W, 1) -> normalised (crop, crop, 3) float32."""
  return normalize(resize_and_crop(image, size, crop))
