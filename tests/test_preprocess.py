"""`clip_preprocess` / `load_image` against Hugging Face's PIL-backend CLIP image processor."""

import glob
import os
import re

import numpy as np
import pytest
from PIL import Image

from medvlmoe_jax.data.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess, load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
TOL = 1e-5


def _xray_paths():
  images = os.path.join(DATA, "chestxray14", "images")
  paths = sorted(glob.glob(os.path.join(images, "*.png")))
  if len(paths) < 2:
    pytest.fail(f"expected the two ChestX-ray14 PNGs in {images} (the shared data folder "
                f"../shared/data next to the project root); found {len(paths)}")
  return paths


def _hf_processor(size=224, crop=224):
  """The openai/clip-vit-large-patch14 preprocessor_config.json, built without a download."""
  try:  # transformers 5: the PIL backend has its own class
    from transformers import CLIPImageProcessorPil as cls
  except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as cls
  return cls(do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
             crop_size={"height": crop, "width": crop}, do_rescale=True,
             rescale_factor=0.00392156862745098, do_normalize=True,
             image_mean=[0.48145466, 0.4578275, 0.40821073],
             image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True)


def _hf(image, size=224, crop=224):
  out = _hf_processor(size, crop)(images=image, return_tensors="np")["pixel_values"]
  return np.asarray(out[0]).transpose(1, 2, 0)


def _max_diff(ours, ref):
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  assert ours.dtype == np.float32
  return float(np.abs(ours - ref).max())


def test_real_xrays_match_hf():
  for path in _xray_paths():
    with Image.open(path) as img:
      assert img.mode == "L"  # the case this test is about: 8-bit greyscale
      ref = _hf(img)
    ours = clip_preprocess(load_image(path))
    diff = _max_diff(ours, ref)
    print(f"{os.path.basename(path)}: max |ours - HF| = {diff:.3g}")
    assert diff <= TOL


def test_load_image_matches_hf_loader():
  from transformers.image_utils import load_image as hf_load_image
  for path in _xray_paths():
    ours = load_image(path)
    assert ours.dtype == np.uint8 and ours.shape == (512, 512, 3)
    np.testing.assert_array_equal(ours, np.asarray(hf_load_image(path)))


# (300, 399) and (399, 300): 224 * 399 / 300 = 297.92, so HF's truncation (297) and rounding
# (298) disagree, and (297 - 224) / 2 = 36.5 makes the crop offset's rounding matter too.
@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (225, 399), (399, 225), (300, 399),
                                (399, 300), (224, 224), (100, 150), (7, 13)])
def test_non_square_rgb_matches_hf(hw):
  rgb = np.random.default_rng(sum(hw)).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
  ref = _hf(Image.fromarray(rgb))
  ours = clip_preprocess(rgb)
  assert ours.shape == (224, 224, 3)
  diff = _max_diff(ours, ref)
  print(f"{hw}: max |ours - HF| = {diff:.3g}")
  assert diff <= TOL


def test_crop_larger_than_resize_pads_like_hf():
  rgb = np.random.default_rng(0).integers(0, 256, size=(201, 333, 3), dtype=np.uint8)
  ours = clip_preprocess(rgb, size=199, crop=224)
  assert _max_diff(ours, _hf(Image.fromarray(rgb), size=199, crop=224)) <= TOL


def _channels_identical(x):
  pixels = x * CLIP_STD + CLIP_MEAN  # back to [0, 1], where the channels must agree
  return np.abs(pixels - pixels[..., :1]).max() < 1e-6


def test_greyscale_becomes_three_identical_channels(tmp_path):
  grey = np.random.default_rng(1).integers(0, 256, size=(240, 310), dtype=np.uint8)
  out = clip_preprocess(grey)
  assert out.shape == (224, 224, 3) and _channels_identical(out)
  np.testing.assert_array_equal(out, clip_preprocess(grey[..., None]))
  np.testing.assert_array_equal(out, clip_preprocess(np.repeat(grey[..., None], 3, axis=-1)))
  assert _max_diff(out, _hf(Image.fromarray(grey))) <= TOL

  path = str(tmp_path / "grey.png")
  Image.fromarray(grey).save(path)
  loaded = load_image(path)
  assert loaded.shape == (240, 310, 3)
  for c in range(3):
    np.testing.assert_array_equal(loaded[..., c], grey)


def test_16bit_greyscale_png_uses_full_range(tmp_path):
  # PIL's own 'I;16' -> 'RGB' clips everything above 255 to white; we map 0..65535 onto 0..255.
  grey16 = np.random.default_rng(3).integers(0, 65536, size=(8, 300), dtype=np.uint16)
  path = str(tmp_path / "grey16.png")
  Image.fromarray(grey16).save(path)
  with Image.open(path) as img:
    assert img.mode.startswith("I")
  loaded = load_image(path)
  assert loaded.dtype == np.uint8 and loaded.shape == (8, 300, 3)
  expected = np.round(grey16 / 257.0).astype(np.uint8)  # 255 / 65535 == 1 / 257
  for c in range(3):
    np.testing.assert_array_equal(loaded[..., c], expected)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_alpha_is_composited_onto_white_like_hf(tmp_path, mode):
  from transformers.image_transforms import convert_to_rgb
  rng = np.random.default_rng(2)
  if mode == "P":
    img = Image.fromarray(rng.integers(0, 4, size=(20, 30), dtype=np.uint8), mode="L")
    img = img.convert("P")
    img.info["transparency"] = 0
  else:
    bands = len(mode)
    img = Image.fromarray(rng.integers(0, 256, size=(20, 30, bands), dtype=np.uint8), mode=mode)
  path = str(tmp_path / f"alpha_{mode}.png")
  img.save(path)
  loaded = load_image(path)
  with Image.open(path) as again:
    ref = convert_to_rgb(again, return_numpy=True)
  np.testing.assert_array_equal(loaded, ref)
  if mode == "LA":
    assert loaded.mean() > np.asarray(img.convert("L")).mean()  # white, not black, behind


def test_missing_file_names_path(tmp_path):
  path = str(tmp_path / "nope.png")
  with pytest.raises(FileNotFoundError, match=re.escape(path)):
    load_image(path)


def test_corrupt_and_truncated_png_name_path(tmp_path):
  with open(_xray_paths()[0], "rb") as f:
    data = f.read()
  truncated = str(tmp_path / "truncated.png")
  with open(truncated, "wb") as f:
    f.write(data[:len(data) // 2])
  garbage = str(tmp_path / "garbage.png")
  with open(garbage, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
  for path in (truncated, garbage):
    with pytest.raises(ValueError, match=re.escape(path)):
      load_image(path)


def test_rejects_non_uint8():
  with pytest.raises(TypeError, match="uint8"):
    clip_preprocess(np.zeros((32, 32, 3), dtype=np.float32))
