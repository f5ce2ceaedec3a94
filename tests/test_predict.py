"""`Predictor` / launch/predict.py on a tiny demo run: image files in, the eval step's
probabilities and the routing decisions out; unreadable files as one-line errors, tiny images
with a warning."""

import functools
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shrunk_demo_config
from medvlmoe_jax import cli
from medvlmoe_jax.data import pipeline, synthetic
from medvlmoe_jax.eval.predict import Predictor
from medvlmoe_jax.train.checkpointing import Checkpointer
from medvlmoe_jax.train.step import eval_step
from medvlmoe_jax.experiment import train_and_evaluate
from medvlmoe_jax.train.trainer import create_experiment

NUM_CLASSES, SIZE = 6, 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  c = shrunk_demo_config(num_train=128)
  c.eval.n_boot = 10
  c.train.epochs = 1
  root = tmp_path_factory.mktemp("predict")
  workdir = str(root / "run")
  train_and_evaluate(c, workdir)
  split = synthetic.make_split("test", 4, NUM_CLASSES, SIZE, seed=1234)
  pngs, jpgs = [], []
  for i, image in enumerate(split.images):
    pngs.append(str(root / f"x{i}.png"))
    jpgs.append(str(root / f"x{i}.jpg"))
    Image.fromarray(image).save(pngs[-1])
    Image.fromarray(image).save(jpgs[-1], quality=95)
  return dict(config=c, workdir=workdir, split=split, pngs=pngs, jpgs=jpgs, root=root,
              predictor=Predictor.from_workdir(workdir, "best"))


def test_png_and_jpeg(run):
  predictor = run["predictor"]
  for path in (run["pngs"][0], run["jpgs"][0]):
    pred = predictor.predict(path, run["split"].texts[0])
    assert list(pred["probabilities"]) == synthetic.class_names(NUM_CLASSES)
    assert all(0.0 <= p <= 1.0 for p in pred["probabilities"].values())
    ids = [e["id"] for e in pred["experts"]]
    assert len(set(ids)) == 2 and all(0 <= i < 8 for i in ids)
    assert sum(e["weight"] for e in pred["experts"]) == pytest.approx(1.0, abs=1e-6)
    assert set(pred["gate"]) == {"mode", "vision", "text"}
  default = predictor.predict(run["pngs"][0])
  assert default["text"] == "no clinical information ."
  json.dumps(default)   # plain Python types only


@pytest.mark.float32_parity
def test_matches_eval_step(run):
  """Params restored alone equal those of the trainer's full restore, and the prediction
  from a file equals the eval step's on the same batch."""
  predictor, config = run["predictor"], run["config"]
  exp = create_experiment(config)
  ckpt = Checkpointer(os.path.join(run["workdir"], "checkpoints"), read_only=True)
  state, _, _ = ckpt.restore(predictor.step, exp.state)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(predictor.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  split = run["split"]
  ids, mask = pipeline.make_tokenizer(config.data)(split.texts, config.data.text_max_len)
  batch = {"image": split.images, "input_ids": ids, "attention_mask": mask}
  step_fn = jax.jit(functools.partial(eval_step, graphdef=exp.graphdef, task=config.data.task))
  want = jax.device_get(step_fn(state.params, batch))
  for i, path in enumerate(run["pngs"]):
    pred = predictor.predict(path, split.texts[i])
    got = np.array(list(pred["probabilities"].values()))
    np.testing.assert_allclose(got, want["probs"][i], rtol=0, atol=1e-6)
    assert [e["id"] for e in pred["experts"]] == list(want["expert_index"][i])


def test_bad_inputs_name_the_path(run):
  predictor, root = run["predictor"], run["root"]
  corrupt = str(root / "corrupt.png")
  with open(corrupt, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
  with pytest.raises(ValueError, match="corrupt.png"):
    predictor.predict(corrupt)
  missing = str(root / "missing.jpg")
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    predictor.predict(missing)
  dicom = str(root / "scan.dcm")
  with open(dicom, "wb") as f:
    f.write(b"\0" * 128 + b"DICM" + b"garbage")
  try:
    import pydicom  # noqa: F401
    expected, match = ValueError, "scan.dcm"
  except ImportError:
    expected, match = ImportError, "scan.dcm: reading DICOM needs pydicom"
  with pytest.raises(expected, match=match):
    predictor.predict(dicom)
  with pytest.raises(ValueError, match="no tokens"):
    predictor.predict(run["pngs"][0], "")


def test_cli_writes_json(run):
  out = str(run["root"] / "pred.json")
  proc = subprocess.run(
      [sys.executable, "launch/predict.py", "--workdir", run["workdir"], "--image",
       run["pngs"][1], "--text", run["split"].texts[1], "--json", out],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr
  with open(out) as f:
    pred = json.load(f)
  want = run["predictor"].predict(run["pngs"][1], run["split"].texts[1])
  assert pred["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
  assert len(pred["experts"]) == 2
  top = max(pred["probabilities"], key=pred["probabilities"].get)
  assert f"{top} " in proc.stdout and "experts: #" in proc.stdout


def _bad_file(root, kind: str, png: bytes, jpg: bytes) -> str:
  path = root / {"missing": "missing.png", "empty": "empty.png", "truncated png": "half.png",
                 "truncated jpeg": "half.jpg", "not an image": "notes.png",
                 "directory": "folder.png"}[kind]
  if kind == "directory":
    path.mkdir()
  elif kind != "missing":
    data = {"empty": b"", "truncated png": png[:len(png) // 2], "truncated jpeg": jpg[:len(jpg) // 2],
            "not an image": b"Patient 12, PA view: no finding.\n"}[kind]
    path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize("kind, expected", [
    ("missing", "no such image file"), ("empty", "empty file (0 bytes)"),
    ("truncated png", "not a readable image"), ("truncated jpeg", "not a readable image"),
    ("not an image", "not a readable image"), ("directory", "not a readable image")])
def test_unreadable_file_is_one_line_naming_it(run, tmp_path, kind, expected):
  with open(run["pngs"][0], "rb") as f, open(run["jpgs"][0], "rb") as g:
    path = _bad_file(tmp_path, kind, f.read(), g.read())
  with pytest.raises(SystemExit) as exit_info:
    with cli.exit_on_bad_input():
      run["predictor"].predict(path)
  message = exit_info.value.code
  assert message.startswith(f"error: {path}: ") and expected in message, message
  assert "\n" not in message


@pytest.mark.parametrize("side, warns", [(1, True), (7, True), (8, False), (32, False)])
def test_image_under_a_quarter_of_the_input_side_warns(run, caplog, side, warns):
  """The demo model sees 32 px: 7 px is under a quarter of that, 8 px is not."""
  path = str(run["root"] / f"small{side}.png")
  Image.fromarray(np.full((side, side + 3, 3), 90, np.uint8)).save(path)
  with caplog.at_level(logging.WARNING, logger="medvlmoe_jax.eval.predict"):
    pred = run["predictor"].predict(path)
  assert all(0.0 <= p <= 1.0 for p in pred["probabilities"].values())
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == warns, warned
  if warns:
    assert warned[0].startswith(f"{path}: {side + 3}x{side} px is far below the model's 32 px")


def test_cli_warns_about_a_tiny_image(run):
  """The warning reaches stderr through absl's logging; the prediction is still made."""
  path = str(run["root"] / "one_pixel.png")
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path)
  proc = subprocess.run([sys.executable, "launch/predict.py", "--workdir", run["workdir"],
                         "--image", path], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert f"{path}: 1x1 px is far below the model's 32 px input" in proc.stderr
  assert "experts: #" in proc.stdout
