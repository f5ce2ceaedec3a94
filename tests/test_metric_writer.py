"""MetricWriter: metrics.jsonl rows, and TensorBoard event files read back record by record.

The reader needs neither TensorFlow nor the tensorboard package: an event file is a TFRecord
stream (uint64 length, masked CRC-32C of the length, the serialized Event, masked CRC-32C of
it), parsed here with tensorboardX's own Event proto and CRC.
"""

import glob
import io
import os
import struct
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from medvlmoe_jax.eval import figures  # noqa: E402
from medvlmoe_jax.train.metric_writer import MetricWriter, read_metrics  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402
from tensorboardX.record_writer import masked_crc32c  # noqa: E402


def read_events(path):
  """Every Event in one event file, checking the TFRecord framing and both CRCs."""
  events = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert header_crc == masked_crc32c(header)
    body = data[pos + 12:pos + 12 + n]
    (body_crc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
    assert len(body) == n and body_crc == masked_crc32c(body)
    events.append(event_pb2.Event.FromString(body))
    pos += 16 + n
  return events


def read_summaries(logdir):
  """({(tag, step): scalar}, {(tag, step): Summary.Image}) over all event files in logdir."""
  files = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
  assert files, f"no event files in {logdir}"
  scalars, images = {}, {}
  for path in files:
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    for ev in events[1:]:
      for v in ev.summary.value:
        key = (v.tag, ev.step)
        assert key not in scalars and key not in images, f"{key} written twice"
        if v.HasField("image"):
          images[key] = v.image
        else:
          assert v.HasField("simple_value"), v
          scalars[key] = v.simple_value
  return scalars, images


def _decode(image):
  im = Image.open(io.BytesIO(image.encoded_image_string))
  assert im.format == "PNG"
  im.load()
  assert im.size == (image.width, image.height)
  return im


def test_scalars_vectors_and_figures_read_back(tmp_path):
  workdir = str(tmp_path)
  w = MetricWriter(workdir)
  share = np.array([0.125, 0.25, 0.3, 0.325], np.float64)
  rows = [
      w.write(10, {"loss": np.float32(0.75), "expert_share": share,
                   "tokens": np.int32(7)}, split="train", examples_per_sec=123.5),
      w.write(20, {"loss": np.asarray(0.5, np.float64), "expert_share": share[::-1]},
              split="train", examples_per_sec=99.0),
      w.write(20, {"val_mean_auc": 0.8125, "per_class": [0.7, None]}, split="val"),
      w.write(20, {"test_mean_auc": 0.79}, split="test", checkpoint_step=10, note="best"),
      w.write(30, {"lr": 1e-3}),  # no split: the tag is the bare name
  ]

  fig, ax = plt.subplots(figsize=(4, 3))
  ax.plot([0, 1], [0, 1])
  written = {}
  figures.expert_load(read_metrics(workdir), str(tmp_path / "out" / "expert_load.png"),
                      written=written)
  assert written == {"expert_load": str(tmp_path / "out" / "expert_load.png")}
  w.write_figures(20, {"eval/figure": fig, "eval/expert_load": written["expert_load"]})
  assert plt.fignum_exists(fig.number)  # left open for the caller
  plt.close(fig)
  w.close()

  # metrics.jsonl: one row per write, plain JSON values, as before.
  assert read_metrics(workdir) == rows
  assert rows[0] == {"step": 10, "split": "train", "examples_per_sec": 123.5, "loss": 0.75,
                     "expert_share": share.tolist(), "tokens": 7}
  assert rows[2]["per_class"] == [0.7, None]

  scalars, images = read_summaries(os.path.join(workdir, "tensorboard"))
  want = {("train/loss", 10): 0.75, ("train/tokens", 10): 7, ("train/examples_per_sec", 10): 123.5,
          ("train/loss", 20): 0.5, ("train/examples_per_sec", 20): 99.0,
          ("val/val_mean_auc", 20): 0.8125, ("val/per_class/0", 20): 0.7,
          ("test/test_mean_auc", 20): 0.79, ("test/checkpoint_step", 20): 10,
          ("lr", 30): 1e-3}
  for e in range(4):
    want[(f"train/expert_share/{e}", 10)] = share[e]
    want[(f"train/expert_share/{e}", 20)] = share[::-1][e]
  # Exactly these: no 'step', no strings ('split', 'note'), no None.
  assert set(scalars) == set(want)
  for key, value in want.items():
    assert scalars[key] == np.float32(value), key  # simple_value is a float32

  assert set(images) == {("eval/figure", 20), ("eval/expert_load", 20)}
  im = _decode(images[("eval/figure", 20)])
  assert 200 < im.width < 800 and 150 < im.height < 600  # 4 x 3 in at 100 dpi, cropped tight
  assert np.asarray(im.convert("L")).std() > 1  # not a blank image
  im = _decode(images[("eval/expert_load", 20)])
  with Image.open(written["expert_load"]) as png:
    assert im.size == png.size
    np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(png.convert("RGB")))


def test_two_writers_same_workdir_keep_both_event_files(tmp_path):
  # Event files are named by the second; a restart within it must not truncate the first.
  for step in (1, 2):
    w = MetricWriter(str(tmp_path))
    w.write(step, {"loss": float(step)}, split="train")
    w.close()
  scalars, _ = read_summaries(str(tmp_path / "tensorboard"))
  assert scalars == {("train/loss", 1): 1.0, ("train/loss", 2): 2.0}
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_import_does_not_load_torch():
  code = ("import sys, medvlmoe_jax.train.metric_writer as m; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["roc", "routing_heatmap"])
def test_figures_report_written_pngs(tmp_path, name):
  labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
  written = {}
  if name == "roc":
    figures.roc_curves(labels, np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.2, 0.3]]),
                       ["a", "b"], str(tmp_path / "roc.png"), written=written)
  else:
    figures.routing_heatmap(labels, np.array([[0, 1], [1, 2], [2, 3], [3, 0]]), ["a", "b"], 4,
                            str(tmp_path / "r.png"), str(tmp_path / "r.csv"), written=written)
  assert list(written) == [name] and os.path.getsize(written[name]) > 1000
