"""Routing, Top-2, the load-balance loss and both dispatchers against the naive reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medvlmoe_jax.moe import dispatch, routing
from medvlmoe_jax.moe.layer import SparseMoE
from medvlmoe_jax.moe.reference import naive_moe

K, W, H = 8, 12, 16


def make_layer(capacity_factor=None, seed=0):
  layer = SparseMoE(W, H, num_experts=K, top_k=2, capacity_factor=capacity_factor,
                    rngs=nnx.Rngs(params=seed))
  rng = np.random.default_rng(seed)
  # Larger router weights than the init so that routing is far from uniform.
  layer.router[...] = jnp.asarray(rng.normal(0, 1.0, (W, K)), jnp.float32)
  layer.b1[...] = jnp.asarray(rng.normal(0, 0.1, (K, H)), jnp.float32)
  layer.b2[...] = jnp.asarray(rng.normal(0, 0.1, (K, W)), jnp.float32)
  return layer


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


@pytest.mark.parametrize("impl", ["ragged", "blocked"])
@pytest.mark.parametrize("num_tokens", [3, 40, 700])
def test_both_dropless_implementations_match_reference(impl, num_tokens):
  layer, x = make_layer(), tokens(num_tokens)
  valid = np.arange(num_tokens) % 7 != 2
  probs = routing.router_probabilities(x, layer.router[...])
  index, weights = routing.top_k_routing(probs, 2)
  y = dispatch.dispatch_dropless(layer.experts(), x, index, weights, jnp.asarray(valid), impl=impl)
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


def test_block_matmul_gradients_match_autodiff():
  from medvlmoe_jax.moe.grouped_matmul import block_matmul
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 6)), jnp.float32)
  group = jnp.asarray([0, 2, 2, 1, 0])
  used = jnp.asarray([True, True, False, True, True])

  def plain(x, w):
    return jnp.where(used[:, None, None], jnp.einsum("jbm,jmn->jbn", x, w[group]), 0)

  f = lambda fn: jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w))), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(block_matmul(x, w, group, used), plain(x, w), rtol=1e-6)
  for a, b in zip(f(lambda x, w: block_matmul(x, w, group, used)), f(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
