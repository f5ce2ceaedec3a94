"""The full model and the trainer on meshes of 8 simulated devices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medvlmoe_jax import sharding
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.experiment import train_and_evaluate
from medvlmoe_jax.train import step as step_lib
from medvlmoe_jax.train import trainer as trainer_lib
from medvlmoe_jax.train.checkpointing import Checkpointer

# Float32 results compared to ~1e-5: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity



@pytest.fixture
def config(demo_config):
  """The shrunk demo config of tests/conftest.py, for 3 epochs."""
  demo_config.train.epochs = 3
  demo_config.eval.n_boot = 10
  return demo_config


def experiment(config, shape, devices=None):
  config.mesh.data, config.mesh.expert = shape
  n = shape[0] * shape[1]
  return trainer_lib.create_experiment(config, devices=(devices or jax.devices())[:n])


def loss_and_grads(exp, batch):
  fn = jax.jit(jax.value_and_grad(step_lib.loss_fn, has_aux=True), static_argnums=(1, 3))
  with jax.set_mesh(exp.mesh):
    (loss, (_, stats)), grads = fn(exp.state.params, exp.graphdef,
                                   sharding.put_batch(batch, exp.mesh), "multilabel", 1.0)
  return jax.device_get((loss, stats, grads))


@pytest.mark.parametrize("granularity", ["sample", "token"])
@pytest.mark.parametrize("shape", [(1, 8), (2, 4), (8, 1)])
def test_sharded_model_forward_and_gradients_equal_single_device(config, granularity, shape):
  config.model.moe.granularity = granularity
  single = experiment(config, (1, 1))
  batch = next(pipeline.train_iterator(single.data.splits["train"], 32, seed=0))
  ref = loss_and_grads(single, batch)
  got = loss_and_grads(experiment(config, shape), batch)
  np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(ref[2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("granularity", ["sample", "token"])
def test_sharded_model_with_capacity_counts_drops(config, granularity):
  config.model.moe.granularity = granularity
  config.model.moe.capacity_factor = 0.25
  exp = experiment(config, (2, 4))
  batch = next(pipeline.train_iterator(exp.data.splits["train"], 32, seed=0))
  loss, stats, _ = loss_and_grads(exp, batch)
  assert np.isfinite(loss) and int(stats["dropped_tokens"]) > 0


@pytest.mark.slow   # whole training runs on the mesh (CI's `pytest -m slow`)
def test_20_training_steps_follow_the_single_device_curve(config):
  curves = {}
  for shape in ((1, 1), (1, 8)):
    exp = experiment(config, shape)
    train_fn, _ = exp.jitted()
    it = pipeline.train_iterator(exp.data.splits["train"], 32, seed=0)
    state, losses = exp.state, []
    for _ in range(20):
      state, m = train_fn(state, sharding.put_batch(next(it), exp.mesh))
      losses.append(float(m["loss"]))
    curves[shape] = np.array(losses)
  print("max |loss difference| over 20 steps:", np.abs(curves[(1, 8)] - curves[(1, 1)]).max())
  np.testing.assert_allclose(curves[(1, 8)], curves[(1, 1)], atol=1e-4)


@pytest.mark.slow   # whole training runs on the mesh (CI's `pytest -m slow`)
def test_restore_onto_a_different_mesh_is_bit_identical(config, tmp_path):
  exp8 = experiment(config, (1, 8))
  train_fn, _ = exp8.jitted()
  it = pipeline.train_iterator(exp8.data.splits["train"], 32, seed=0)
  state = exp8.state
  for _ in range(3):
    state, _ = train_fn(state, sharding.put_batch(next(it), exp8.mesh))
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(3, state, it.get_state(), {})
  saved = jax.device_get(state)
  for shape in ((1, 4), (2, 2), (1, 1)):
    target = experiment(config, shape)
    restored, _, _ = ckpt.restore(3, target.state)
    w1 = restored.params["moe"]["w1"][...]
    assert w1.sharding.mesh.size == shape[0] * shape[1]
    assert w1.addressable_shards[0].data.shape[0] == 8 // shape[1]
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(saved)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and training goes on from the restored state on the new mesh
    fn, _ = target.jitted()
    fn(restored, sharding.put_batch(next(it), target.mesh))


@pytest.mark.slow   # whole training runs on the mesh (CI's `pytest -m slow`)
def test_trainer_on_a_mesh_writes_the_summary(config, tmp_path, capsys):
  config.mesh.data, config.mesh.expert = 2, 4
  config.train.epochs = 1
  workdir = str(tmp_path / "run")
  rep = train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["mesh"] == {"data": 2, "expert": 4} and summary["num_devices"] == 8
  assert summary["expert_shards"]["moe/w1"]["per_device"] == [2, 128, 128]
  assert summary["expert_shards"]["moe/w1"]["global"] == [8, 128, 128]
  assert summary["platform"]["target"] == {"platform": "cpu", "device_kind": "cpu",
                                           "num_devices": 8}
  assert set(summary["platform"]["attention"].values()) == {"blocked"}
  assert summary["platform"]["moe_dispatch"] == "slots (all_to_all over 'expert')"
  assert "per device [2, 128, 128]" in capsys.readouterr().out
  assert rep["mean_auc"] is not None
