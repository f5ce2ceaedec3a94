"""The train state is created where it lives: one jitted init with out_shardings, no host
copy and no device_put of a finished state; each expert shard is made on its device only."""

import jax
import numpy as np

from medvlmoe_jax import sharding
from medvlmoe_jax.models.medvlmoe import abstract_model
from medvlmoe_jax.train import optimizer as optim_lib
from medvlmoe_jax.train.trainer import init_state


def _init(config, devices):
  mesh = sharding.make_mesh(config.mesh, config.model.moe.num_experts, devices)
  _, _, abstract = abstract_model(config.model, config.seed)
  scheds = optim_lib.schedules(config.optim, 10, 1, 0)
  tx = optim_lib.make_optimizer(config.optim, abstract, scheds)
  # Any transfer (a device_put of a finished state, host or device to device) raises here.
  with jax.transfer_guard("disallow_explicit"):
    state, _ = init_state(config, tx, mesh)
  return state


def test_expert_shards_created_on_their_devices(demo_config, devices):
  demo_config.mesh.data, demo_config.mesh.expert = 1, 8
  state = _init(demo_config, devices)
  demo_config.mesh.data, demo_config.mesh.expert = 1, 1
  single = jax.device_get(_init(demo_config, devices[:1]))
  leaves = lambda tree: {jax.tree_util.keystr(p): x
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, got = leaves(single), leaves(state)
  experts = {p: x for p, x in got.items() if "'moe']" in p and any(
      f"'{w}'" in p for w in ("w1", "b1", "w2", "b2"))}
  # The parameters and both Adam moments of the 4 expert tensors.
  assert len(experts) == 12 and any(".params" in p for p in experts)
  for path, x in experts.items():
    assert x.sharding.spec == jax.sharding.PartitionSpec("expert"), path
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 8 and {s.device for s in shards} == set(devices)
    for k, s in enumerate(shards):
      # Device k holds expert k only, with the values a single-device init gives.
      assert s.data.shape == (1,) + x.shape[1:], path
      assert s.data.devices() == {s.device}
      np.testing.assert_array_equal(np.asarray(s.data), want[path][k:k + 1])
  # Everything else is replicated, and equal to the single-device init.
  for path, x in got.items():
    if path not in experts:
      assert x.sharding.is_fully_replicated, path
      np.testing.assert_array_equal(np.asarray(jax.device_get(x)), want[path])
