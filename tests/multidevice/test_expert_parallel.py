"""Expert parallelism: sharded MoE equals the single-device computation (forward and
gradients), experts are really split, dropped counts match the naive reference, and every
dispatch implementation runs inside shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from medvlmoe_jax import sharding
from medvlmoe_jax.moe import dispatch, routing
from medvlmoe_jax.moe.dispatch import ExpertParams
from moe_reference import dense_layer, grouped_capacity_reference, naive_moe
from moe_layers import K, W, make_layer

# Float32 results compared to ~1e-5: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity

T = 64
MESHES = [(1, 8), (2, 4), (8, 1), (4, 2)]


def mesh_of(shape):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=shape[0], expert=shape[1])), K)


def layer_and_tokens(capacity_factor=None, seed=0, num_tokens=T, dispatch="auto"):
  layer = make_layer(capacity_factor, seed, dispatch)
  rng = np.random.default_rng(seed + 1)
  x = jnp.asarray(rng.normal(size=(num_tokens, W)), jnp.float32)
  valid = jnp.asarray(np.arange(num_tokens) % 5 != 3)
  return layer, x, valid


def place(params, mesh):
  """Shard a standalone layer's params as they are inside the model (path 'moe/...')."""
  return jax.device_put(params, sharding.tree_shardings(mesh, {"moe": params})["moe"])


def run_layer(layer, x, valid, mesh=None):
  """Loss, output, dropped count and gradients (params and x), on one device or sharded."""
  graphdef, params = nnx.split(layer, nnx.Param)

  def loss(params, x):
    y, aux = nnx.merge(graphdef, params)(x, valid)
    return jnp.sum(jnp.sin(y)) + aux["load_balance_loss"], (y, aux["dropped_tokens"])

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  if mesh is None:
    (l, (y, dropped)), grads = fn(params, x)
  else:
    params = place(params, mesh)
    x_sharded = jax.device_put(x, NamedSharding(mesh, sharding.BATCH))
    with jax.set_mesh(mesh):
      (l, (y, dropped)), grads = fn(params, x_sharded)
  return jax.device_get((l, y, dropped, grads))


@pytest.mark.parametrize("shape", MESHES)
def test_dropless_sharded_equals_single_device(shape):
  layer, x, valid = layer_and_tokens()
  ref = run_layer(layer, x, valid)
  got = run_layer(layer, x, valid, mesh_of(shape))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  assert int(got[2]) == 0


@pytest.mark.parametrize("shape", [(1, 8), (2, 4)])
@pytest.mark.parametrize("collapsed", [False, True])
def test_dropless_capacity_switch_equals_single_device(shape, collapsed):
  """With 64 tokens per device the dropless slot capacity is picked at run time among
  several; a router collapsed onto two experts forces the largest (C = local tokens)."""
  layer, x, valid = layer_and_tokens(num_tokens=512)
  if collapsed:
    x = x + 2.0                                    # a shared direction that experts 0, 1 own
    layer.router[...] = layer.router[...].at[:, :2].add(1.0)
  ref = run_layer(layer, x, valid)
  got = run_layer(layer, x, valid, mesh_of(shape))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  assert int(got[2]) == 0


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("capacity_factor", [0.5, 1.25])
def test_capacity_sharded_equals_grouped_single_device(shape, capacity_factor):
  """Each device is one capacity group; the single-device twin uses the same groups."""
  layer, x, valid = layer_and_tokens(capacity_factor)
  mesh = mesh_of(shape)
  got = run_layer(layer, x, valid, mesh)
  index, weights = routing.top_k_routing(routing.router_probabilities(x, layer.router[...]), 2)
  y_ref, dropped_ref = grouped_capacity_reference(
      layer.experts(), x, index, weights, valid, num_groups=8, capacity_factor=capacity_factor)
  np.testing.assert_allclose(got[1], np.asarray(y_ref), rtol=1e-5, atol=1e-5)
  assert int(got[2]) == int(dropped_ref)

  # The naive reference, group by group, drops the same number of assignments.
  p = lambda v: np.asarray(v[...], np.float64)
  capacity = dispatch.compute_capacity(T // 8, K, 2, capacity_factor)
  naive = [naive_moe(np.asarray(x)[g * 8:(g + 1) * 8],
                     p(layer.router), p(layer.w1), p(layer.b1), p(layer.w2), p(layer.b2),
                     valid=np.asarray(valid)[g * 8:(g + 1) * 8], capacity=capacity)
           for g in range(8)]
  assert int(got[2]) == sum(r["dropped"] for r in naive)
  np.testing.assert_allclose(got[1], np.concatenate([r["y"] for r in naive]), rtol=1e-4, atol=1e-5)
  if capacity_factor == 0.5:
    assert int(got[2]) > 0


def test_each_device_holds_one_eighth_of_the_experts():
  layer, _, _ = layer_and_tokens()
  mesh = mesh_of((1, 8))
  params = nnx.state(layer, nnx.Param)
  params = place(params, mesh)
  for name in ("w1", "b1", "w2", "b2"):
    arr = params[name][...]
    shards = arr.addressable_shards
    assert len(shards) == 8
    assert {s.data.shape for s in shards} == {(1,) + arr.shape[1:]}
    assert sorted(s.index[0].start for s in shards) == list(range(8))
  router = params["router"][...]
  assert all(s.data.shape == router.shape for s in router.addressable_shards)   # replicated


@pytest.mark.parametrize("impl", sorted(dispatch.IMPLS))
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_every_dispatch_under_shard_map_matches_references(impl, capacity_factor):
  """On the (8, 1) mesh each device runs `impl` on its 32 tokens inside shard_map: output
  and drops as the naive reference group by group, loss and gradients as autodiff of the
  dense reference with the same groups."""
  layer, x, valid = layer_and_tokens(capacity_factor, num_tokens=256, dispatch=impl)
  loss, y, dropped, grads = run_layer(layer, x, valid, mesh_of((8, 1)))

  p = lambda v: np.asarray(v[...], np.float64)
  capacity = dispatch.compute_capacity(32, K, 2, capacity_factor)
  naive = [naive_moe(np.asarray(x)[g * 32:(g + 1) * 32], p(layer.router), p(layer.w1),
                     p(layer.b1), p(layer.w2), p(layer.b2),
                     valid=np.asarray(valid)[g * 32:(g + 1) * 32], capacity=capacity)
           for g in range(8)]
  want_y = np.concatenate([r["y"] for r in naive]) * np.asarray(valid)[:, None]
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
  assert int(dropped) == sum(r["dropped"] for r in naive)
  assert (int(dropped) > 0) == (capacity_factor is not None)

  def ref_loss(params, x):
    y, lb = dense_layer(params, x, valid, capacity_factor=capacity_factor, num_groups=8)
    return jnp.sum(jnp.sin(y)) + lb
  want_loss, want = jax.value_and_grad(ref_loss, (0, 1))(nnx.split(layer, nnx.Param)[1], x)
  np.testing.assert_allclose(loss, float(want_loss), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
