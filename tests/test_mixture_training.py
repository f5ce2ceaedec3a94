"""Training one model on a mixture of datasets (data.mixture): a head per dataset, batches
that mix them, per-dataset evaluation, exact resume."""

import json
import os

import numpy as np
import pytest

from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.eval import run as eval_run
from medvlmoe_jax.experiment import train_and_evaluate
from medvlmoe_jax.train import trainer as trainer_lib
from medvlmoe_jax.train.metric_writer import read_metrics

from conftest import shrunk_demo_config


def mixture_config(max_steps=6):
  c = shrunk_demo_config()
  c.data.mixture = (
      {"synthetic": {"num_classes": 3, "num_train": 128, "num_val": 32, "num_test": 32},
       "name": "xray", "modality": "x-ray"},
      {"synthetic": {"num_classes": 5, "num_train": 96, "num_val": 32, "num_test": 32,
                     "modality": 1, "seed": 7}, "name": "fundus", "modality": "fundus",
       "weight": 0.5})
  c.model.moe.router_context = "modality"
  c.train.max_steps = max_steps
  c.train.eval_every_epochs = 0.25        # 224 // 32 = 7 steps an epoch: every 2 steps
  c.train.patience = 100
  c.eval.n_boot = 10
  return c


def test_mixture_loads_with_a_head_per_dataset():
  c = mixture_config()
  exp = trainer_lib.create_experiment(c)
  assert isinstance(exp.data, pipeline.Mixture)
  assert exp.task == (("multilabel", 3), ("multilabel", 5))
  assert tuple(c.model.heads) == (3, 5) and c.model.num_modalities == 2
  assert exp.steps_per_epoch == (128 + 96) // 32
  batch = trainer_lib.host_batch(exp.data, next(trainer_lib.make_train_iterator(
      exp.data, c, exp.mesh)))
  assert batch["labels"].shape == (32, 5)
  # weights 1 : 0.5 -> about two thirds of the rows from the first dataset
  assert 18 <= int(np.sum(batch["dataset"] == 0)) <= 24
  np.testing.assert_array_equal(batch["modality"], batch["dataset"])
  assert not batch["label_mask"][batch["dataset"] == 0, 3:].any()


def test_mixture_entry_errors_name_the_entry():
  c = mixture_config()
  c.data.mixture = ({"synthetic": {}, "weight": 0},)
  with pytest.raises(BadInputError, match=r"data.mixture\[0\].*weight"):
    pipeline.load_dataset(c)
  c.data.mixture = ({"synthetic": {}}, {"synthetic": {}})
  with pytest.raises(BadInputError, match=r"data.mixture\[1\].*second dataset named"):
    pipeline.load_dataset(c)
  c.data.mixture = ({"pth": "x"},)
  with pytest.raises(BadInputError, match=r"data.mixture\[0\]"):
    pipeline.load_dataset(c)


@pytest.mark.slow   # three short training runs and an evaluation (CI's `pytest -m slow`)
def test_mixture_run_reports_each_dataset_and_resumes_exactly(tmp_path):
  """Each dataset's report is the one a run on it alone would give (its own classes), the
  mean is over datasets; stopping at step 4 and resuming gives the uninterrupted losses."""
  whole = str(tmp_path / "whole")
  rep = train_and_evaluate(mixture_config(), whole)
  assert set(rep["datasets"]) == {"xray", "fundus"}
  assert len(rep["datasets"]["xray"]["per_class_auc"]) == 3
  assert len(rep["datasets"]["fundus"]["per_class_auc"]) == 5
  np.testing.assert_allclose(
      rep["mean_auc"], np.mean([r["mean_auc"] for r in rep["datasets"].values()]))

  parted = str(tmp_path / "parted")
  train_and_evaluate(mixture_config(max_steps=4), parted)
  train_and_evaluate(mixture_config(max_steps=6), parted)
  losses = lambda w: {r["step"]: r["loss"] for r in read_metrics(w) if r["split"] == "train"}
  assert sorted(losses(whole)) == list(range(1, 7))
  for step in range(1, 7):
    assert losses(parted)[step] == losses(whole)[step], step

  out = eval_run.evaluate_workdir(whole, "test", out_dir=str(tmp_path / "eval"))
  metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
  assert set(metrics["datasets"]) == {"xray", "fundus"}
  for key in ("modality", "dataset"):
    shares = metrics[f"expert_share_by_{key}"]
    assert set(shares) == ({"x-ray", "fundus"} if key == "modality" else {"xray", "fundus"})
    np.testing.assert_allclose([sum(v) for v in shares.values()], 1.0, rtol=1e-6)
    assert 0.0 <= metrics[f"specialisation_{key}"] <= 1.0
    assert os.path.exists(tmp_path / "eval" / f"routing_by_{key}.png")
  assert os.path.exists(tmp_path / "eval" / "fundus" / "roc.png")
  assert "fundus:" in out["table"]
