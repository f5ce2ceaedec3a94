"""Record format, MedMNIST preparation on the real RetinaMNIST, the Grain pipeline over
records (deterministic, resumable, process-sharded, augmentation) and the config files."""

import glob
import os
import sys

import ml_collections
import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.data import medmnist, pipeline, records

RETINA = os.path.join(SHARED_DATA, "retinamnist", "retinamnist.npz")


@pytest.fixture(scope="module")
def retina_records(tmp_path_factory):
  if not os.path.exists(RETINA):
    pytest.fail(f"real data missing: {RETINA} (shared/data next to the repository)")
  out = str(tmp_path_factory.mktemp("retina"))
  medmnist.prepare(RETINA, out)
  return out


def test_medmnist_prepare_real_retinamnist(retina_records):
  manifest = records.read_manifest(retina_records)
  assert manifest["name"] == "retinamnist" and manifest["task"] == "ordinal"
  assert manifest["classes"] == ["0", "1", "2", "3", "4"]
  assert {k: v["num_examples"] for k, v in manifest["splits"].items()} == \
      {"train": 1080, "val": 120, "test": 400}
  assert manifest["source_checksums"]["retinamnist.npz"] == "bd4c0672f1bba3e3a89f0e4e876791e4"
  npz = np.load(RETINA)
  split = pipeline.RecordSplit([os.path.join(retina_records, f) for f in
                                manifest["splits"]["test"]["files"]],
                               pipeline.make_tokenizer(ml_collections.ConfigDict(dict(tokenizer="word"))), 16)
  batch = split.gather(np.array([0, 5, 399]))
  np.testing.assert_array_equal(batch["image"], npz["test_images"][[0, 5, 399]])
  np.testing.assert_array_equal(batch["labels"].argmax(-1), npz["test_labels"][[0, 5, 399], 0])
  assert "retina" in records.decode_example(split.source[0])["text"]


def records_config(path):
  sys.path.insert(0, ROOT)
  from configs import retinamnist
  c = retinamnist.get_config("small")
  c.data.path = path
  c.data.batch_size = 32
  return c


def test_records_pipeline_is_deterministic_and_resumable(retina_records):
  data = pipeline.load_dataset(records_config(retina_records))
  train = data.splits["train"]
  a = pipeline.train_iterator(train, 32, seed=3)
  b = pipeline.train_iterator(train, 32, seed=3)
  c = pipeline.train_iterator(train, 32, seed=4)
  first = [next(a) for _ in range(3)]
  for batch in first:
    np.testing.assert_array_equal(batch["image"], next(b)["image"])
  assert not np.array_equal(first[0]["labels"], next(c)["labels"])
  state = a.get_state()
  after = [next(a)["image"] for _ in range(2)]
  resumed = pipeline.train_iterator(train, 32, seed=3)
  resumed.set_state(state)
  for image in after:
    np.testing.assert_array_equal(image, next(resumed)["image"])


def test_process_rows_partition_the_global_batch(retina_records):
  train = pipeline.load_dataset(records_config(retina_records)).splits["train"]
  full = next(pipeline.train_iterator(train, 32, seed=0))
  halves = [next(pipeline.train_iterator(train, 32, seed=0, rows=slice(i * 16, (i + 1) * 16)))
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["labels"] for h in halves]), full["labels"])
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), full["image"])


def test_augmentation_is_seeded_and_never_flips_by_default():
  cfg = config_lib.defaults().data.augment
  image = np.zeros((1, 32, 32, 3), np.uint8)
  image[:, :, :8] = 200                      # bright on the left
  rng = lambda: np.random.default_rng(0)
  out = [pipeline.augment(image, np.random.default_rng(s), cfg) for s in range(20)]
  assert all(o[0, :, :16].mean() > o[0, :, 16:].mean() for o in out)
  np.testing.assert_array_equal(pipeline.augment(image, rng(), cfg), pipeline.augment(image, rng(), cfg))
  cfg.hflip = True
  flipped = [pipeline.augment(image, np.random.default_rng(s), cfg) for s in range(20)]
  assert any(o[0, :, :16].mean() < o[0, :, 16:].mean() for o in flipped)


def test_records_config_errors_name_the_path(tmp_path, retina_records):
  c = records_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    pipeline.load_dataset(c)
  c = records_config(retina_records)
  c.model.num_classes = 4
  with pytest.raises(ValueError, match="5 classes but model.num_classes=4"):
    pipeline.load_dataset(c)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_is_valid(path):
  name = os.path.basename(path)[:-3]
  if name.startswith("__"):
    return
  sys.path.insert(0, ROOT)
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  dataset_config = "arg" in module.get_config.__code__.co_varnames   # CONFIG and CONFIG:small
  for arg in [None] + (["small"] if dataset_config else []):
    c = module.get_config(arg) if arg else module.get_config()
    config_lib.validate(c)
  if dataset_config:                  # the paper's recipe
    full = module.get_config()
    assert full.model.init_from and full.data.path and full.data.batch_size == 32
    assert full.optim.lr.encoder == 3e-5 and full.optim.lr.head == 1e-4
    assert full.train.epochs == 100 and full.train.warmup_epochs == 10 and full.train.patience == 15
    assert full.model.dtype == "bfloat16" and full.model.fusion.dim == 512
