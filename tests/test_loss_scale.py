import jax.numpy as jnp
import numpy as np

from medvlmoe_jax.train import trainer as trainer_lib
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.train.loss_scale import DynamicLossScale


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_interval():
  s = DynamicLossScale.create(1024.0, growth_interval=3)
  s = s.update(jnp.asarray(False))
  assert float(s.scale) == 512.0 and int(s.good_steps) == 0
  for _ in range(2):
    s = s.update(jnp.asarray(True))
  assert float(s.scale) == 512.0
  s = s.update(jnp.asarray(True))
  assert float(s.scale) == 1024.0 and int(s.good_steps) == 0


def test_float16_training_skips_overflowing_steps(demo_config):
  demo_config.model.dtype = "float16"
  demo_config.optim.loss_scale.initial = 2.0 ** 40    # overflows float16 at first
  demo_config.data.batch_size = 8                     # float16 is emulated (slow) on CPUs
  exp = trainer_lib.create_experiment(demo_config)
  train_fn, _ = exp.jitted()
  it = pipeline.train_iterator(exp.data.splits["train"], 8, seed=0)
  state = exp.state
  scales = []
  for _ in range(4):
    state, m = train_fn(state, next(it))
    scales.append(float(m["loss_scale"]))
  assert scales[0] < 2.0 ** 40                      # overflow detected, scale reduced
  assert np.isfinite(float(m["loss"]))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax_leaves(state.params))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)
