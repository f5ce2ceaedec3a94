"""Optimizer groups, checkpoints, resume after SIGKILL, and the run's guard rails."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.experiment import train_and_evaluate
from medvlmoe_jax.train import trainer as trainer_lib
from medvlmoe_jax.train.checkpointing import Checkpointer
from medvlmoe_jax.train.metric_writer import read_metrics
from medvlmoe_jax.train.optimizer import group_labels

from conftest import ROOT


def run_steps(config, n):
  exp = trainer_lib.create_experiment(config)
  train_fn, _ = exp.jitted()
  it = pipeline.train_iterator(exp.data.splits["train"], config.data.batch_size, seed=config.seed)
  before = jax.device_get(exp.state.params)
  state, metrics = exp.state, None
  for _ in range(n):
    state, metrics = train_fn(state, next(it))
  return exp, before, jax.device_get(state.params), metrics


def by_group(tree, labels, group):
  return [np.asarray(x) for x, g in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)) if g == group]


def test_groups_partition_encoders_and_head(demo_config):
  exp = trainer_lib.create_experiment(demo_config)
  labels = group_labels(exp.state.params, demo_config.optim.groups)
  flat = dict(zip(jax.tree.leaves(trainer_lib.optim_lib.tree_paths(exp.state.params)),
                  jax.tree.leaves(labels)))
  assert flat["vision/patch_embedding/kernel"] == "encoder"
  assert flat["text/embed_tokens"] == "encoder"
  for head_param in ("vision_proj/proj/kernel", "fusion/0/vision_from_text/q_proj/kernel",
                     "gate/proj/kernel", "moe/router", "moe/w1", "classifier/kernel"):
    assert flat[head_param] == "head", head_param


def test_every_trainable_group_gets_gradient_and_moves(demo_config):
  demo_config.train.warmup_epochs = 0
  exp, before, after, _ = run_steps(demo_config, 1)
  labels = group_labels(exp.state.params, demo_config.optim.groups)
  for group in ("encoder", "head"):
    moved = [np.any(a != b) for a, b in zip(by_group(after, labels, group),
                                             by_group(before, labels, group))]
    assert np.mean(moved) > 0.9, f"group {group}: only {np.mean(moved):.0%} of tensors changed"


def test_frozen_group_does_not_change(demo_config):
  demo_config.optim.lr.encoder = 0.0
  exp, before, after, metrics = run_steps(demo_config, 3)
  labels = group_labels(exp.state.params, demo_config.optim.groups)
  for a, b in zip(by_group(after, labels, "encoder"), by_group(before, labels, "encoder")):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(by_group(after, labels, "head"),
                                            by_group(before, labels, "head")))
  assert float(metrics["lr_encoder"]) == 0.0


def test_update_sizes_follow_learning_rates(demo_config):
  """First Adam step moves each element by ~lr (|m/sqrt(v)| = 1): the ratio of the typical
  update sizes of the two groups is the ratio of their learning rates."""
  demo_config.train.warmup_epochs = 0
  demo_config.optim.weight_decay = 0.0
  demo_config.optim.lr.encoder = 1e-4
  demo_config.optim.lr.head = 1e-3
  exp, before, after, _ = run_steps(demo_config, 1)
  labels = group_labels(exp.state.params, demo_config.optim.groups)

  def typical_step(group):
    deltas = np.concatenate([np.abs(a - b).ravel() for a, b in zip(
        by_group(after, labels, group), by_group(before, labels, group))])
    return np.median(deltas[deltas > 0])

  ratio = typical_step("head") / typical_step("encoder")
  assert 9.0 < ratio < 11.0, ratio


def test_checkpoint_restore_is_bit_identical(demo_config, tmp_path):
  exp = trainer_lib.create_experiment(demo_config)
  train_fn, _ = exp.jitted()
  it = pipeline.train_iterator(exp.data.splits["train"], 32, seed=0)
  state = exp.state
  for _ in range(3):
    state, _ = train_fn(state, next(it))
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(3, state, it.get_state(), {"best_step": None}, metrics={"val_mean_auc": 0.5})
  fresh = trainer_lib.create_experiment(demo_config).state
  restored, data_state, trainer = ckpt.restore(3, fresh)
  assert data_state == it.get_state() and trainer == {"best_step": None}
  leaves_a, tree_a = jax.tree.flatten(jax.device_get(state))
  leaves_b, tree_b = jax.tree.flatten(jax.device_get(restored))
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unknown_config_key_is_named(demo_config):
  demo_config.model.moe.unlock()
  demo_config.model.moe.num_expert = 4
  with pytest.raises(config_lib.ConfigError, match=r"model\.moe\.num_expert .*did you mean model\.moe\.num_experts"):
    trainer_lib.create_experiment(demo_config)


def test_unknown_config_key_on_the_command_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/train.py", "--config", "configs/demo.py", "--workdir",
       str(tmp_path / "w"), "--config.model.moe.experts=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "experts" in proc.stderr and not (tmp_path / "w" / "checkpoints").exists()


def test_missing_data_path_is_named(demo_config):
  demo_config.data.name = "tfds"
  demo_config.data.path = "/nonexistent/retinamnist28"
  with pytest.raises(FileNotFoundError, match="/nonexistent/retinamnist28"):
    trainer_lib.create_experiment(demo_config)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_config, tmp_path, monkeypatch):
  demo_config.train.eval_every_epochs = 0.5     # 8 train batches per epoch -> every 4 steps
  demo_config.train.log_every_steps = 100
  real_iterator = pipeline.train_iterator

  def poisoned(*args, **kwargs):
    it = real_iterator(*args, **kwargs)

    class Poisoned:
      calls = 0
      def __next__(self):
        batch = next(it)
        self.calls += 1
        if self.calls >= 6:
          # Float pixels are taken as normalised: NaN reaches the model as it is.
          batch["image"] = np.full(batch["image"].shape, np.nan, np.float32)
        return batch
      def __getattr__(self, name):
        return getattr(it, name)
    return Poisoned()

  monkeypatch.setattr(pipeline, "train_iterator", poisoned)
  workdir = str(tmp_path / "run")
  with pytest.raises(trainer_lib.NonFiniteLossError, match=r"step 6.*checkpoint \(step 4\)"):
    train_and_evaluate(demo_config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [4]
  state, _, _ = ckpt.restore(4, trainer_lib.create_experiment(demo_config).state)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def _train_cmd(workdir, config="configs/demo.py"):
  size = (["--config.train.max_steps=48"] if "multimodal" in config else   # 64 steps an epoch
          ["--config.data.synthetic.num_train=512", "--config.data.synthetic.num_val=64",
           "--config.data.synthetic.num_test=64", "--config.train.epochs=3"])
  return [sys.executable, "launch/train.py", "--config", config, "--workdir", workdir,
          "--config.data.batch_size=32", "--config.train.warmup_epochs=1",
          "--config.train.eval_every_epochs=0.25", "--config.train.log_every_steps=1",
          "--config.eval.n_boot=10", "--config.train.patience=100", *size]


def _losses(workdir):
  losses = {}
  for row in read_metrics(workdir):
    if row.get("split") == "train":
      losses[row["step"]] = row["loss"]     # a resumed run repeats steps: the last one wins
  return losses


@pytest.mark.slow   # two training runs in subprocesses (CI's `pytest -m slow`)
@pytest.mark.parametrize("config", ["configs/demo.py", "configs/demo_multimodal.py"])
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, config):
  """A run killed after step N's checkpoint and restarted logs the same losses after N (one
  dataset, and a mixture of two with a head each, modality routing and alignment)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  ref_dir, kill_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
  subprocess.run(_train_cmd(ref_dir, config), cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=600)

  proc = subprocess.Popen(_train_cmd(kill_dir, config), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(kill_dir, "checkpoints")
  deadline = time.time() + 300
  killed_after = None
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if steps and max(steps) >= 16:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      killed_after = max(steps)
      break
    time.sleep(0.05)
  assert killed_after is not None, "the run finished or hung before it could be killed"
  partial = _losses(kill_dir)
  assert max(partial) < 48, "killed too late to test anything"

  subprocess.run(_train_cmd(kill_dir, config), cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=600)
  ref, resumed = _losses(ref_dir), _losses(kill_dir)
  assert sorted(ref) == list(range(1, 49)) and sorted(resumed) == sorted(ref)
  after = [s for s in ref if s > killed_after]
  assert after, "nothing left to compare"
  assert [resumed[s] for s in after] == [ref[s] for s in after]
  with open(os.path.join(ref_dir, "test_metrics.json")) as f, \
       open(os.path.join(kill_dir, "test_metrics.json")) as g:
    assert json.load(f)["mean_auc"] == json.load(g)["mean_auc"]


def test_checkpointer_keeps_latest_and_best(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
  state = {"w": jnp.arange(3.0)}
  for step, auc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.4)]:
    ckpt.save(step, state, {}, {}, metrics={"val_mean_auc": auc})
  assert ckpt.all_steps() == [2, 4, 5]


def test_early_stopping_after_patience(demo_config, tmp_path):
  """With both groups frozen the val AUC never improves: the run stops after patience evals."""
  demo_config.optim.lr.encoder = 0.0
  demo_config.optim.lr.head = 0.0
  demo_config.train.epochs = 10
  demo_config.train.eval_every_epochs = 0.5      # every 4 steps
  demo_config.train.patience = 2
  workdir = str(tmp_path / "run")
  train_and_evaluate(demo_config, workdir)
  rows = read_metrics(workdir)
  val_steps = [r["step"] for r in rows if r["split"] == "val"]
  assert val_steps == [4, 8, 12]
  assert max(r["step"] for r in rows if r["split"] == "train") == 12
  test_row = [r for r in rows if r["split"] == "test"][0]
  assert test_row["checkpoint_step"] == 4


def test_checkpointer_best_tie_goes_to_earliest(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=1)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": jnp.zeros(2)}, {}, {}, metrics={"val_mean_auc": 0.5})
  assert ckpt.all_steps() == [1, 3]
