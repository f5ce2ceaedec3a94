"""Datasets as TFDS builders (data/builder.py): MedMNIST built from the real RetinaMNIST, the
synthetic builder, what a failed build leaves, the Grain pipeline over a built dataset
(deterministic, resumable, process-sharded, augmentation), the config files, and a whole run
with TensorFlow unimportable."""

import glob
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import ROOT, SHARED_DATA

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.data import builder, medmnist, pipeline, synthetic
from medvlmoe_jax.data.sources import BadInputError

RETINA = os.path.join(SHARED_DATA, "retinamnist", "retinamnist.npz")


@pytest.fixture(scope="module")
def retina_built(tmp_path_factory):
  if not os.path.exists(RETINA):
    pytest.fail(f"real data missing: {RETINA} (shared/data next to the repository)")
  out = str(tmp_path_factory.mktemp("retina") / "retinamnist28")
  builder.build(medmnist.MedMNIST, out, src=RETINA, config="retinamnist", image_size=28)
  return out


def test_medmnist_build_of_the_real_retinamnist(retina_built):
  ds = tfds.builder_from_directory(retina_built)       # what the README tells users
  meta = ds.info.metadata
  assert meta["name"] == "retinamnist" and meta["task"] == "ordinal"
  assert meta["classes"] == ["0", "1", "2", "3", "4"]
  assert {k: v.num_examples for k, v in ds.info.splits.items()} == \
      {"train": 1080, "val": 120, "test": 400}
  assert meta["source_checksums"]["retinamnist.npz"] == "bd4c0672f1bba3e3a89f0e4e876791e4"
  assert meta["differences_from_medmnist_info"] == []
  assert ds.info.file_format.value == "array_record" and "medmnist" in ds.info.citation
  assert ds.info.config_name == "retinamnist" and ds.info.release_notes
  npz = np.load(RETINA)
  split = pipeline.TfdsSplit(ds, "test", pipeline.make_tokenizer(config_lib.defaults().data), 16)
  batch = split.gather(np.array([0, 5, 399]))
  np.testing.assert_array_equal(batch["image"], npz["test_images"][[0, 5, 399]])
  np.testing.assert_array_equal(batch["labels"].argmax(-1), npz["test_labels"][[0, 5, 399], 0])
  assert "retina" in split.source[0]["text"].decode()


def test_labels_and_patients_are_read_without_decoding_images(retina_built, monkeypatch):
  split = pipeline.TfdsSplit(builder.load(retina_built), "val", None, 16)

  def no_decoding(*args, **kwargs):
    raise AssertionError("an image was decoded")

  monkeypatch.setattr(tfds.features.Image, "decode_example_np", no_decoding)
  npz = np.load(RETINA)
  np.testing.assert_array_equal(split.labels.argmax(-1), npz["val_labels"][:, 0])
  assert split.label_mask.all() and split.groups is None    # MedMNIST has no patient ids
  with pytest.raises(AssertionError, match="decoded"):
    split.gather(np.array([0]))


def _altered_retina(tmp_path, drop_train_rows: int = 0) -> str:
  npz = dict(np.load(RETINA))
  npz["train_images"] = npz["train_images"][drop_train_rows:]
  npz["train_labels"] = npz["train_labels"][drop_train_rows:]
  path = str(tmp_path / "retinamnist.npz")
  np.savez(path, **npz)
  return path


def test_medmnist_file_unlike_medmnist_info_is_refused_in_one_line(tmp_path):
  path = _altered_retina(tmp_path, drop_train_rows=1)
  with pytest.raises(BadInputError, match=r"train has 1079 examples, medmnist.INFO says 1080"):
    medmnist.check(path)
  for extra in (["--check"], ["--out", str(tmp_path / "out")]):
    proc = subprocess.run([sys.executable, "data_prep/medmnist.py", "--src", path, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and path in last and "--accept_mismatch" in last
    assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "out")
  out = str(tmp_path / "accepted")
  builder.build(medmnist.MedMNIST, out, src=path, config="retinamnist", image_size=28,
                accept_mismatch=True)
  meta = builder.load(out).info.metadata
  assert any("train has 1079" in d for d in meta["differences_from_medmnist_info"])
  assert any(d.startswith("md5 ") for d in meta["differences_from_medmnist_info"])


class _Files(builder.Builder):
  """A dataset of image files, to break one on purpose."""
  name = "files"
  VERSION = tfds.core.Version("1.0.0")
  CLASSES = ("a", "b")

  def __init__(self, *, paths, **kwargs):
    self.paths = paths
    super().__init__(**kwargs)

  def read(self, src):
    return {"train": [builder.Example(key=str(i), where=f"list.csv, row {i + 2}", image=p,
                                      text="t", labels=np.eye(2)[i % 2],
                                      label_mask=np.ones(2, bool), patient_id=f"p{i}")
                      for i, p in enumerate(self.paths)]}


def test_a_failed_build_leaves_nothing_and_a_rerun_succeeds(tmp_path):
  paths = []
  for i in range(6):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(np.full((40, 30), 40 * i, np.uint8)).save(paths[-1])
  out = str(tmp_path / "built")
  good = open(paths[4], "rb").read()
  open(paths[4], "wb").write(good[:len(good) // 2])          # truncated PNG
  with pytest.raises(BadInputError, match=r"list.csv, row 6: .*4.png"):
    builder.build(_Files, out, paths=paths, image_size=16, num_workers=2)
  assert not os.path.exists(out) and not glob.glob(out + ".*")
  with pytest.raises(BadInputError, match="'train': every one of its 1 examples was skipped"):
    builder.build(_Files, out, paths=[paths[4]], image_size=16, skip_bad=True)
  # skip_bad: a counted skip, recorded in the metadata
  b = builder.build(_Files, out, paths=paths, image_size=16, skip_bad=True)
  assert b.info.splits["train"].num_examples == 5
  meta = builder.load(out).info.metadata
  assert meta["skipped"]["counts"] == {"unreadable_image": 1} and meta["patients"]["train"] == 5
  # a failing rebuild keeps the good build; after the fix a rebuild replaces it
  with pytest.raises(BadInputError):
    builder.build(_Files, out, paths=paths, image_size=16)
  assert builder.load(out).info.splits["train"].num_examples == 5
  open(paths[4], "wb").write(good)
  builder.build(_Files, out, paths=paths, image_size=16)
  source = builder.load(out).as_data_source("train")
  assert len(source) == 6 and source[4]["image"].shape == (16, 16, 3)
  assert [source[i]["patient_id"].decode() for i in range(6)] == [f"p{i}" for i in range(6)]
  split = pipeline.TfdsSplit(builder.load(out), "train", None, 4)   # the grouped bootstrap's
  assert split.groups.tolist() == [f"p{i}" for i in range(6)]
  np.testing.assert_array_equal(split.labels, np.eye(2)[np.arange(6) % 2])
  # never overwrite a folder that is not a built dataset
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not a built dataset"):
    builder.build(_Files, str(tmp_path / "mine"), paths=paths, image_size=16)
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
  with pytest.raises(FileExistsError, match="not a built dataset"):
    builder.build(_Files, str(tmp_path / "mine" / "notes.txt"), paths=paths, image_size=16)
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_synthetic_builder_matches_the_in_memory_demo(tmp_path):
  out = str(tmp_path / "synthetic")
  builder.build(synthetic.Synthetic, out, num_train=8, num_val=4, num_test=4, num_classes=3,
                seed=5, image_size=24)
  source = builder.load(out).as_data_source("val")
  split = synthetic.make_split("val", 4, 3, 24, 5)
  for i in range(4):
    np.testing.assert_array_equal(source[i]["image"], split.images[i])
    np.testing.assert_array_equal(source[i]["labels"], split.labels[i])
    assert source[i]["text"].decode() == split.texts[i]


def built_config(path):
  sys.path.insert(0, ROOT)
  from configs import retinamnist_small
  c = retinamnist_small.get_config()
  c.data.path = path
  c.data.batch_size = 32
  return c


def test_pipeline_is_deterministic_and_resumable(retina_built):
  data = pipeline.load_dataset(built_config(retina_built))
  assert data.name == "retinamnist" and data.class_names == ["0", "1", "2", "3", "4"]
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


def test_process_rows_partition_the_global_batch(retina_built):
  train = pipeline.load_dataset(built_config(retina_built)).splits["train"]
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


def test_config_errors_name_the_path(tmp_path, retina_built):
  c = built_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    pipeline.load_dataset(c)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no built dataset"):
    pipeline.load_dataset(built_config(str(tmp_path / "empty")))
  c = built_config(retina_built)
  c.model.num_classes = 4
  with pytest.raises(ValueError, match="5 classes but model.num_classes=4"):
    pipeline.load_dataset(c)
  # a data_dir in TFDS's own layout (name/config/version) resolves to its one dataset
  nested = tmp_path / "tfds_layout" / "medmnist" / "retinamnist" / "1.0.0"
  shutil.copytree(retina_built, nested)
  assert builder.resolve(str(tmp_path / "tfds_layout")) == str(nested)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_is_valid(path):
  name = os.path.basename(path)[:-3]
  if name.startswith("__"):
    return
  sys.path.insert(0, ROOT)
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  variants = getattr(module, "ARGS", None)   # a config that lists its own CONFIG:ARG values
  dataset_config = variants is None and "arg" in module.get_config.__code__.co_varnames
  for arg in [None] + (["small"] if dataset_config else list(variants or [])):
    c = module.get_config(arg) if arg else module.get_config()
    config_lib.validate(c)
  if dataset_config:                  # the paper's recipe
    full = module.get_config()
    assert full.model.init_from and full.data.path and full.data.batch_size == 32
    assert full.data.name == "tfds"
    assert full.optim.lr.encoder == 3e-5 and full.optim.lr.head == 1e-4
    assert full.train.epochs == 100 and full.train.warmup_epochs == 10 and full.train.patience == 15
    assert full.model.dtype == "bfloat16" and full.model.fusion.dim == 512


@pytest.mark.slow   # prep, train and eval in a fresh interpreter (CI's `pytest -m slow`)
def test_prep_train_and_evaluate_without_tensorflow(tmp_path):
  """Building, one training step and the evaluation never import TensorFlow (were it
  installed, TFDS would import it lazily only for what the project avoids)."""
  script = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {ROOT!r})
      from configs import retinamnist_small
      from medvlmoe_jax.data import builder, medmnist
      from medvlmoe_jax.experiment import train_and_evaluate
      builder.build(medmnist.MedMNIST, {str(tmp_path / "data")!r}, src={RETINA!r},
                    config="retinamnist", image_size=28)
      c = retinamnist_small.get_config()
      c.data.path = {str(tmp_path / "data")!r}
      c.train.max_steps = 1
      c.eval.n_boot = 10
      result = train_and_evaluate(c, {str(tmp_path / "run")!r})
      print("TF_MODULES", [m for m in sys.modules if m.split(".")[0] == "tensorflow"])
      print("TEST_AUC", result["mean_auc"])
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TF_MODULES []" in proc.stdout
  auc = float(proc.stdout.split("TEST_AUC")[1].split()[0])
  assert 0.0 <= auc <= 1.0
