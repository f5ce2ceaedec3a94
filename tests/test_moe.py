"""Routing, Top-2, the load-balance loss and every dispatcher against the naive reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.models.medvlmoe import abstract_model
from medvlmoe_jax.moe import dispatch, grouped_matmul, routing
from moe_reference import dense_layer, dense_moe, naive_moe
from moe_layers import H, K, W, make_layer

# Float32 results compared to ~1e-5: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity

IMPLS = sorted(dispatch.IMPLS)      # blocks, cpu_kernel, ragged_dot, slots

def reference(layer, x, valid=None, capacity=None):
  p = lambda v: np.asarray(v[...], np.float64)
  return naive_moe(np.asarray(x), p(layer.router), p(layer.w1), p(layer.b1), p(layer.w2),
                   p(layer.b2), valid=valid, capacity=capacity)


def tokens(n=40, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, W)), jnp.float32)


def test_top2_choice_and_weights_match_reference():
  layer, x = make_layer(), tokens()
  probs = routing.router_probabilities(x, layer.router[...])
  index, weights = routing.top_k_routing(probs, 2)
  ref = reference(layer, x)
  np.testing.assert_array_equal(np.asarray(index), ref["expert_index"])
  np.testing.assert_allclose(np.asarray(weights), ref["weights"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(probs), ref["probs"], rtol=1e-5, atol=1e-7)


def test_top2_prefers_the_two_largest():
  probs = jnp.asarray([[0.1, 0.5, 0.05, 0.35], [0.4, 0.1, 0.3, 0.2]])
  index, weights = routing.top_k_routing(probs, 2)
  np.testing.assert_array_equal(np.asarray(index), [[1, 3], [0, 2]])
  np.testing.assert_allclose(np.asarray(weights), [[0.5 / 0.85, 0.35 / 0.85], [0.4 / 0.7, 0.3 / 0.7]], rtol=1e-6)


def test_load_balance_loss_is_alpha_when_uniform():
  n = 64
  probs = jnp.full((n, K), 1.0 / K)
  # Every expert receives exactly n * 2 / K assignments.
  index = jnp.stack([jnp.arange(n) % K, (jnp.arange(n) + 1) % K], axis=1)
  loss = routing.load_balance_loss(probs, index, alpha=0.01)
  np.testing.assert_allclose(float(loss), 0.01, rtol=1e-6)


def test_load_balance_loss_grows_when_router_collapses():
  n = 64
  uniform = routing.load_balance_loss(jnp.full((n, K), 1.0 / K),
                                      jnp.stack([jnp.arange(n) % K, (jnp.arange(n) + 1) % K], 1))
  collapsed_probs = jnp.tile(jnp.asarray([0.9] + [0.1 / 7] * 7), (n, 1))
  collapsed_index = jnp.tile(jnp.asarray([[0, 1]]), (n, 1))
  collapsed = routing.load_balance_loss(collapsed_probs, collapsed_index)
  assert float(collapsed) > 3 * float(uniform)


def test_load_balance_loss_matches_reference_with_padding():
  layer, x = make_layer(), tokens()
  valid = np.arange(40) % 3 != 0
  _, aux = layer(x, jnp.asarray(valid))
  ref = reference(layer, x, valid=valid)
  np.testing.assert_allclose(float(aux["load_balance_loss"]), ref["load_balance_loss"], rtol=1e-5)


@pytest.mark.parametrize("with_padding", [False, True])
def test_dropless_dispatch_matches_reference(with_padding):
  layer, x = make_layer(), tokens()
  valid = (np.arange(40) % 4 != 1) if with_padding else np.ones(40, bool)
  y, aux = layer(x, jnp.asarray(valid))
  ref = reference(layer, x, valid=valid)
  expected = ref["y"] * valid[:, None]       # padding tokens are not routed: zero MoE output
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-5)
  assert int(aux["dropped_tokens"]) == 0


@pytest.mark.parametrize("capacity_factor", [0.25, 0.5, 1.0, 2.0])
def test_capacity_dispatch_matches_reference(capacity_factor):
  layer, x = make_layer(capacity_factor), tokens()
  valid = np.arange(40) % 5 != 2
  capacity = dispatch.compute_capacity(40, K, 2, capacity_factor)
  y, aux = layer(x, jnp.asarray(valid))
  ref = reference(layer, x, valid=valid, capacity=capacity)
  np.testing.assert_allclose(np.asarray(y), ref["y"], rtol=1e-4, atol=1e-5)
  assert int(aux["dropped_tokens"]) == ref["dropped"]
  if capacity_factor <= 0.5:
    assert ref["dropped"] > 0           # the case really exercises dropping


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_tokens", [3, 40, 700])
def test_all_dropless_implementations_match_reference(impl, num_tokens):
  layer, x = make_layer(), tokens(num_tokens)
  valid = np.arange(num_tokens) % 7 != 2
  probs = routing.router_probabilities(x, layer.router[...])
  index, weights = routing.top_k_routing(probs, 2)
  y, _ = dispatch.dispatch(layer.experts(), x, index, weights, jnp.asarray(valid), impl=impl)
  ref = reference(layer, x, valid=valid)
  np.testing.assert_allclose(np.asarray(y), ref["y"] * valid[:, None], rtol=1e-4, atol=1e-5)


def test_large_capacity_equals_dropless():
  x = tokens()
  y_dropless, _ = make_layer(None)(x)
  y_capacity, aux = make_layer(float(K))(x)
  np.testing.assert_allclose(np.asarray(y_capacity), np.asarray(y_dropless), rtol=1e-5, atol=1e-6)
  assert int(aux["dropped_tokens"]) == 0


def test_compute_capacity():
  assert dispatch.compute_capacity(40, 8, 2, 1.0) == 10
  assert dispatch.compute_capacity(40, 8, 2, 1.25) == 13
  assert dispatch.compute_capacity(3, 8, 2, 0.1) == 1


def test_gradients_flow_to_router_and_experts():
  layer, x = make_layer(), tokens()
  graphdef, params = nnx.split(layer, nnx.Param)

  def loss(p):
    y, aux = nnx.merge(graphdef, p)(x)
    return jnp.sum(y ** 2) + aux["load_balance_loss"]

  grads = jax.grad(loss)(params)
  for name in ("router", "w1", "b1", "w2", "b2"):
    assert float(jnp.max(jnp.abs(grads[name][...]))) > 0, name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("capacity", [1, 3, 10])
def test_every_capacity_implementation_matches_reference(impl, capacity):
  layer, x = make_layer(), tokens()
  valid = np.arange(40) % 5 != 2
  index, weights = routing.top_k_routing(routing.router_probabilities(x, layer.router[...]), 2)
  y, dropped = dispatch.dispatch(layer.experts(), x, index, weights, jnp.asarray(valid),
                                 capacity, impl=impl)
  ref = reference(layer, x, valid=valid, capacity=capacity)
  np.testing.assert_allclose(np.asarray(y), ref["y"], rtol=1e-4, atol=1e-5)
  assert int(dropped) == ref["dropped"]


def test_slot_rows_serve_first_choices_first():
  index = jnp.asarray([[1, 0], [2, 0], [0, 1]])
  valid = jnp.asarray([True, True, True])
  position, _ = dispatch.expert_positions(index, valid, num_experts=3)
  rows, dropped = dispatch.slot_rows(index, position, valid, num_experts=3, capacity=2)
  # Expert 0 (rows 0, 1): token 2's first choice, then token 0's second; token 1's second
  # choice is dropped (row 6 = out of range) although token 1 comes before token 2.
  # Expert 1 (rows 2, 3): token 0, then token 2. Expert 2 (rows 4, 5): token 1.
  np.testing.assert_array_equal(np.asarray(rows), [[2, 1], [4, 6], [0, 3]])
  assert int(dropped) == 1


@pytest.mark.parametrize("impl", ["blocks", "cpu_kernel", "slots"])
def test_dropless_when_routing_collapses_onto_two_experts(impl):
  layer, x = make_layer(), tokens(64)
  index = jnp.tile(jnp.asarray([[3, 5]]), (64, 1)).at[0].set(jnp.asarray([5, 1]))
  weights = jnp.full((64, 2), 0.5)
  valid = jnp.ones(64, bool)
  y, _ = dispatch.dispatch(layer.experts(), x, index, weights, valid, impl=impl)
  want, _ = dispatch.dispatch(layer.experts(), x, index, weights, valid, impl="ragged_dot")
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_dropless_capacities_end_at_the_token_count():
  assert dispatch.dropless_capacities(32, 2, 8) == [8, 12, 17, 25, 32]
  assert dispatch.dropless_capacities(3, 2, 8) == [3]
  for tokens_, k in ((40, 2), (384, 2), (1000, 1)):
    caps = dispatch.dropless_capacities(tokens_, k, 8)
    assert caps[-1] == tokens_ and caps == sorted(set(caps))


def test_block_sizes_tile_every_segment():
  for num_rows in (6, 64, 700, 6144, 100_000):
    sizes = grouped_matmul.block_sizes(num_rows, K)
    assert all(a == 2 * b for a, b in zip(sizes, sizes[1:]))
    for size in range(0, 3 * sizes[0] + 1, sizes[-1]):
      covered = [r for block, first, count in grouped_matmul._blocks(sizes, 5, size)
                 for r in range(first, first + count * block)]
      assert covered == list(range(5, 5 + size)), (num_rows, size)


@pytest.mark.parametrize("mode", [f"{kind}/{impl}" for kind in ("dropless", "capacity")
                                  for impl in IMPLS])
@pytest.mark.parametrize("num_tokens", [3, 300])
def test_gradients_match_autodiff_of_dense_reference(mode, num_tokens):
  layer, x = make_layer(), tokens(num_tokens)
  params = layer.experts()
  valid = jnp.asarray(np.arange(num_tokens) % 7 != 2)
  index, weights = routing.top_k_routing(routing.router_probabilities(x, layer.router[...]), 2)
  kind, impl = mode.split("/")
  capacity = max(1, num_tokens // 8)
  if kind == "dropless":
    fn = lambda p, x, w: dispatch.dispatch(p, x, index, w, valid, impl=impl)[0]
    kept = valid[:, None]
  else:
    fn = lambda p, x, w: dispatch.dispatch(p, x, index, w, valid, capacity, impl=impl)[0]
    kept, _ = dispatch.kept_within_capacity(
        dispatch.expert_positions(index, valid, K)[0], valid, capacity)
    assert not bool(jnp.all(kept[valid]))            # some assignments are dropped
  grad = lambda f: jax.grad(lambda p, x, w: jnp.sum(jnp.sin(3 * f(p, x, w))), (0, 1, 2))(
      params, x, weights)
  got, want = grad(fn), grad(lambda p, x, w: dense_moe(p, x, index, w, kept))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_layer_with_each_dispatch_matches_references(impl, capacity_factor):
  """`SparseMoE(dispatch=impl)`: output and drops as the naive reference, loss and gradients
  (router and experts, through the routing weights) as autodiff of the dense reference."""
  layer, x = make_layer(capacity_factor, dispatch=impl), tokens(96)
  valid = jnp.asarray(np.arange(96) % 7 != 2)
  graphdef, params = nnx.split(layer, nnx.Param)

  def loss(layer_fn, p, x):
    y, lb = layer_fn(p, x)
    return jnp.sum(jnp.sin(3 * y)) + lb, y

  def layer_fn(p, x):
    y, aux = nnx.merge(graphdef, p)(x, valid)
    return y, aux["load_balance_loss"]

  ref_fn = lambda p, x: dense_layer(p, x, valid, capacity_factor=capacity_factor)
  (got_loss, y), got = jax.value_and_grad(functools.partial(loss, layer_fn), (0, 1),
                                          has_aux=True)(params, x)
  (want_loss, _), want = jax.value_and_grad(functools.partial(loss, ref_fn), (0, 1),
                                            has_aux=True)(params, x)
  capacity = dispatch.compute_capacity(96, K, 2, capacity_factor)
  ref = reference(layer, x, valid=np.asarray(valid), capacity=capacity)
  np.testing.assert_allclose(np.asarray(y), ref["y"] * np.asarray(valid)[:, None], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_block_size_bounds_padding_by_a_quarter_of_the_rows():
  assert dispatch.block_size(6144, 8) == 128          # token granularity: 32 x 96 tokens, Top-2
  assert dispatch.block_size(64, 8) == 8              # sample granularity: the smallest block
  for rows in (1, 100, 1000, 10_000, 1_000_000):
    block = dispatch.block_size(rows, 8)
    assert 8 <= block <= 512 and block & (block - 1) == 0
    assert block == 8 or 4 * 8 * block <= rows


@pytest.mark.parametrize("block", [8, 16])
def test_block_count_holds_every_expert_split(block):
  """The static block count covers the worst splits (an expert's partial block each) and
  is reached."""
  rng = np.random.default_rng(0)
  for rows in (1, 5, 7, 8, 9, 64, 65, 200):
    for capacity in (rows, max(1, rows // 3)):
      bound = dispatch.block_count(rows, K, block, capacity)
      splits = [np.minimum(rng.multinomial(rows, rng.dirichlet(np.full(K, a))), capacity)
                for a in (0.1, 1.0, 10.0) for _ in range(50)]
      for each in (1, block + 1):           # K-1 experts start a partial block, one takes the rest
        head = np.full(K - 1, each)
        splits.append(np.minimum(np.r_[head, max(0, rows - head.sum())], capacity))
      filled = [np.sum(-(-c // block)) for c in splits if c.sum() <= rows]
      assert max(filled) <= bound, (rows, capacity)
      if capacity == rows:
        assert max(filled) == bound, (rows, capacity)
  assert dispatch.block_count(6144, 8, 128, 3072) == 48 + 7


def test_blocks_hold_one_expert_each():
  """Every kept assignment gets its own row, inside a block of its expert."""
  layer, x = make_layer(), tokens(300)
  index, _ = routing.top_k_routing(routing.router_probabilities(x, layer.router[...]), 2)
  index = index.at[:100].set(jnp.asarray([3, 5]))            # a crowded pair of experts
  valid = jnp.asarray(np.arange(300) % 7 != 2)
  block = dispatch.block_size(600, K)
  num_blocks = dispatch.block_count(600, K, block, 300)
  position, kept, start, size, _ = dispatch.segments(index, valid, K, None, align=block)
  rows = np.asarray(dispatch.segment_rows(index, position, kept, start, num_blocks * block))
  kept_rows = rows[np.asarray(kept)]
  assert len(set(kept_rows)) == kept_rows.size and kept_rows.max() < num_blocks * block
  experts = np.asarray(dispatch.block_experts(size, block, num_blocks))
  np.testing.assert_array_equal(experts[kept_rows // block], np.asarray(index)[np.asarray(kept)])


def test_config_key_chooses_the_dispatch():
  c = config_lib.defaults()
  assert c.model.moe.dispatch == "auto"
  for name in ["auto"] + IMPLS:
    c.model.moe.dispatch = name
    config_lib.validate(c)
  config_lib.apply_size(c, "tiny", "tiny", "tiny")
  c.model.moe.dispatch = "blocks"
  model, _, _ = abstract_model(c.model)           # the model hands the key to its MoE layer
  assert model.moe.dispatch == "blocks"
  c.model.moe.dispatch = "ragged"
  with pytest.raises(config_lib.ConfigError, match="model.moe.dispatch"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="ragged"):
    make_layer(dispatch="ragged")
