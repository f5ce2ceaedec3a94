"""launch/eval.py's evaluation restores parameters only: it builds no optimizer or train
state and does not re-read the converted encoders of `model.init_from`."""

import json
import os

import pytest

from medvlmoe_jax.eval import run as eval_run
from medvlmoe_jax.experiment import train_and_evaluate
from medvlmoe_jax.train import optimizer as optim_lib
from medvlmoe_jax.train import trainer as trainer_lib


def test_evaluation_builds_no_training_state(demo_config, tmp_path, monkeypatch):
  demo_config.train.max_steps = 8
  workdir = str(tmp_path / "run")
  trained = train_and_evaluate(demo_config, workdir)
  # As if the run had started from converted encoders that are no longer there.
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved["model"]["init_from"] = str(tmp_path / "gone" / "converted")
  with open(path, "w") as f:
    json.dump(saved, f)

  def forbidden(*args, **kwargs):
    raise AssertionError("evaluation built training state")
  monkeypatch.setattr(optim_lib, "make_optimizer", forbidden)
  monkeypatch.setattr(trainer_lib, "init_state", forbidden)
  monkeypatch.setattr(trainer_lib, "create_experiment", forbidden)
  rep = eval_run.evaluate_workdir(workdir, "test", "best", out_dir=str(tmp_path / "eval"))
  assert rep["checkpoint_step"] == trained["checkpoint_step"]
  assert rep["mean_auc"] == pytest.approx(trained["mean_auc"], abs=1e-12)
  assert rep["per_class_auc"] == trained["per_class_auc"]
