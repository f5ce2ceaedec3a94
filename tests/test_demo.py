"""The README's main command: the demo trains, reaches test mean AUC >= 0.90, and eval.py
reproduces the number from the workdir."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_metric_writer import read_summaries


@pytest.mark.slow   # the whole demo, as the README runs it (CI's `pytest -m slow`)
def test_demo_trains_and_eval_reproduces(tmp_path):
  workdir = str(tmp_path / "demo")
  env = dict(os.environ, PYTHONPATH=ROOT)
  start = time.time()
  subprocess.run([sys.executable, "launch/train.py", "--config", "configs/demo.py",
                  "--workdir", workdir], cwd=ROOT, env=env, check=True, capture_output=True,
                 timeout=600)
  wall = time.time() - start
  with open(os.path.join(workdir, "test_metrics.json")) as f:
    trained = json.load(f)
  print(f"demo: wall {wall:.0f}s, test mean AUC {trained['mean_auc']:.4f}")
  assert trained["mean_auc"] >= 0.90

  out = subprocess.run([sys.executable, "launch/eval.py", "--workdir", workdir, "--split", "test",
                        "--checkpoint", "best"], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=300)
  step = trained["checkpoint_step"]
  with open(os.path.join(workdir, "eval", f"test_step{step}", "metrics.json")) as f:
    evaluated = json.load(f)
  assert evaluated["mean_auc"] == trained["mean_auc"]
  assert evaluated["per_class_auc"] == trained["per_class_auc"]
  assert "mean" in out.stdout and f"{trained['mean_auc']:.4f}" in out.stdout
  # TensorBoard (tensorboardX, a plain install): the logged scalars and eval.py's figures.
  scalars, images = read_summaries(os.path.join(workdir, "tensorboard"))
  assert ("val/val_mean_auc", step) in scalars and any(t == "train/loss" for t, _ in scalars)
  assert scalars[("test/test_mean_auc", max(s for t, s in scalars if t == "train/loss"))] == (
      pytest.approx(trained["mean_auc"], abs=1e-6))
  assert {("test/roc", step), ("test/routing_heatmap", step), ("test/expert_load", step)} <= set(images)
