"""MedMNIST .npz input (data/medmnist.py): images that are not uint8 are scaled explicitly or
refused, and every bad file ends in one error naming the file, the key and the row, through
`check`, a build and the data_prep script, rather than black images or truncated labels."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT

from medvlmoe_jax.data import builder, medmnist
from medvlmoe_jax.data.sources import BadInputError

SIZES = {"train": 4, "val": 2, "test": 3}


def _npz(tmp_path, name: str = "retinamnist", **arrays) -> str:
  """A small valid file of `name` (28 px RGB uint8; retinamnist labels (N, 1) in 0..4,
  chestmnist (N, 14) of 0 / 1) with `arrays` replacing its keys (None drops one). Its sizes
  differ from medmnist.INFO, so it is read with accept_mismatch."""
  rng = np.random.default_rng(0)
  z = {}
  for split, n in SIZES.items():
    z[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    z[f"{split}_labels"] = (rng.integers(0, 2, (n, 14)) if name == "chestmnist"
                            else np.arange(n)[:, None] % 5).astype(np.uint8)
  z.update(arrays)
  path = str(tmp_path / f"{name}.npz")
  np.savez(path, **{k: v for k, v in z.items() if v is not None})
  return path


def test_float_images_in_0_1_are_scaled_and_said_so(tmp_path):
  x = np.linspace(0, 1, 4 * 28 * 28 * 3, dtype=np.float32).reshape(4, 28, 28, 3)
  grey = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256   # lossless cast
  path = _npz(tmp_path, train_images=x, test_images=grey)
  data = medmnist.read_npz(path, "retinamnist")
  scaled = np.rint(x * 255).astype(np.uint8)
  images = {split: images for split, (images, _) in data["splits"].items()}
  assert images["train"].dtype == np.uint8 and images["train"].max() == 255
  np.testing.assert_array_equal(images["train"], scaled)
  np.testing.assert_array_equal(images["val"], np.load(path)["val_images"])   # uint8 as is
  np.testing.assert_array_equal(images["test"], grey.astype(np.uint8))
  assert images["val"].dtype == images["test"].dtype == np.uint8
  assert data["conversions"] == ["train_images: float in [0, 1], scaled to 0..255 "
                                 "(x * 255, rounded)"]
  assert data["conversions"][0] in medmnist.check(path, accept_mismatch=True)
  out = str(tmp_path / "built")
  builder.build(medmnist.MedMNIST, out, src=path, config="retinamnist", image_size=28,
                accept_mismatch=True)
  ds = tfds.builder_from_directory(out)
  assert ds.info.metadata["conversions"] == data["conversions"]
  np.testing.assert_array_equal(ds.as_data_source("train")[3]["image"], scaled[3])


def _floats(shape, value):
  a = np.zeros(shape, np.float32)
  a.flat[-1] = value
  return a


def _labels(rows, dtype=np.float32):
  return np.array(rows, dtype)


def _chest(n, row, value):
  a = np.zeros((n, 14), np.float32)
  a[row, 0] = value
  return a


BAD = {   # case: (set, arrays, what the one-line error names besides the file)
    "float_images_0_255": ("retinamnist", {"train_images": _floats((4, 28, 28, 3), 255.0)},
                           ["train_images", "[0, 1]"]),
    "nan_images": ("retinamnist", {"val_images": _floats((2, 28, 28, 3), np.nan)},
                   ["val_images", "NaN"]),
    "inf_images": ("retinamnist", {"val_images": _floats((2, 28, 28, 3), np.inf)},
                   ["val_images", "inf"]),
    "int_images_over_255": ("retinamnist", {"test_images": np.full((3, 28, 28), 256, np.int16)},
                            ["test_images", "0..255"]),
    "negative_int_images": ("retinamnist", {"test_images": np.full((3, 28, 28), -1, np.int64)},
                            ["test_images", "0..255"]),
    "bool_images": ("retinamnist", {"train_images": np.ones((4, 28, 28), bool)},
                    ["train_images", "bool"]),
    "complex_images": ("retinamnist", {"train_images": np.ones((4, 28, 28), np.complex64)},
                       ["train_images", "complex64"]),
    "four_channel_images": ("retinamnist", {"train_images": np.zeros((4, 28, 28, 4), np.uint8)},
                            ["train_images", "(4, 28, 28, 4)"]),
    "flat_images": ("retinamnist", {"train_images": np.zeros((4, 784), np.uint8)},
                    ["train_images", "(4, 784)"]),
    "fractional_label": ("retinamnist", {"train_labels": _labels([[0], [0.5], [1], [2]])},
                         ["train_labels row 1", "0.5"]),
    "nan_label": ("retinamnist", {"val_labels": _labels([[1], [np.nan]])},
                  ["val_labels row 1", "nan"]),
    "text_labels": ("retinamnist", {"train_labels": np.array([["a"], ["b"], ["c"], ["d"]])},
                    ["train_labels", "<U1"]),
    "label_out_of_range": ("retinamnist", {"train_labels": _labels([[0], [1], [2], [5]])},
                           ["train_labels row 3", "0..4"]),
    "multilabel_2": ("chestmnist", {"train_labels": _chest(4, row=2, value=2)},
                     ["train_labels row 2", "2", "'atelectasis'", "0 / 1"]),
    "multilabel_fraction": ("chestmnist", {"test_labels": _chest(3, row=1, value=0.5)},
                            ["test_labels row 1", "0.5", "0 / 1"]),
    "count_mismatch": ("retinamnist", {"train_labels": _labels([[0], [1], [2]], np.uint8)},
                       ["split train", "4 images", "3 labels"]),
    "missing_key": ("retinamnist", {"test_labels": None}, ["'test_labels'"]),
    "object_labels": ("retinamnist", {"val_labels": np.array([[0], [1]], object)},
                      ["val_labels", "Object arrays"]),
    "multiclass_one_hot": ("retinamnist", {"train_labels": np.eye(4, 5, dtype=np.uint8)},
                           ["train_labels", "(4, 5)", "(N, 1)"]),
    "multilabel_3_columns": ("chestmnist", {"train_labels": np.zeros((4, 3), np.uint8)},
                             ["train_labels", "(4, 3)", "(N, 14)"]),
}


@pytest.mark.parametrize("how", ["check", "build"])
@pytest.mark.parametrize("case", BAD)
def test_a_bad_npz_is_one_error_naming_file_key_and_row(tmp_path, case, how):
  name, arrays, named = BAD[case]
  path = _npz(tmp_path, name, **arrays)
  out = str(tmp_path / "out")
  with pytest.raises(BadInputError) as e:
    if how == "check":
      medmnist.check(path, accept_mismatch=True)
    else:
      builder.build(medmnist.MedMNIST, out, src=path, config=name, image_size=28,
                    accept_mismatch=True)
  message = str(e.value)   # what data_prep prints after 'error: '
  assert "\n" not in message and message.startswith(f"{path}: ")
  for part in named:
    assert part in message, message
  assert not os.path.exists(out)


def test_the_script_prints_one_error_line(tmp_path):
  path = _npz(tmp_path, train_labels=_labels([[0], [0.5], [1], [2]]))
  out = str(tmp_path / "out")
  proc = subprocess.run([sys.executable, "data_prep/medmnist.py", "--src", path, "--out", out,
                         "--accept_mismatch"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == \
      f"error: {path}: train_labels row 1 has label 0.5: not an integer class index"
  assert not os.path.exists(out)
