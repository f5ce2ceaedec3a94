"""References the MoE tests compare against; never used in training.

`naive_moe`: a deliberately naive MoE in NumPy, Python loops over tokens and experts, the
executable specification of routing and dispatch. `dense_moe` and `dense_layer`: every expert
on every token, masked to the kept assignments, whose autodiff gradients the dispatchers'
must equal. `grouped_capacity_reference`: the single-device twin of the expert-parallel
dispatch, which the sharded one must equal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from medvlmoe_jax.moe import dispatch, routing
from medvlmoe_jax.moe.experts import ExpertParams


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def naive_moe(x, router_kernel, w1, b1, w2, b2, valid=None, top_k=2, capacity=None,
              alpha=0.01):
  """Returns dict(y, expert_index, weights, probs, dropped, load_balance_loss)."""
  x = np.asarray(x, np.float64)
  num_tokens, _ = x.shape
  num_experts = w1.shape[0]
  valid = np.ones(num_tokens, bool) if valid is None else np.asarray(valid, bool)
  probs = np.zeros((num_tokens, num_experts))
  expert_index = np.zeros((num_tokens, top_k), np.int64)
  weights = np.zeros((num_tokens, top_k))
  for t in range(num_tokens):
    logits = x[t] @ np.asarray(router_kernel, np.float64)
    e = np.exp(logits - logits.max())
    probs[t] = e / e.sum()
    ranked = sorted(range(num_experts), key=lambda j: (-probs[t, j], j))[:top_k]
    expert_index[t] = ranked
    z = sum(probs[t, j] for j in ranked)
    weights[t] = [probs[t, j] / z for j in ranked]

  # Slots: first choices of all tokens in token order, then second choices, ...
  used = [0] * num_experts
  kept = np.zeros((num_tokens, top_k), bool)
  for choice in range(top_k):
    for t in range(num_tokens):
      if not valid[t]:
        continue
      e = expert_index[t, choice]
      if capacity is None or used[e] < capacity:
        used[e] += 1
        kept[t, choice] = True
  dropped = int(sum(1 for t in range(num_tokens) for c in range(top_k)
                    if valid[t] and not kept[t, c]))

  y = np.zeros_like(x)
  for t in range(num_tokens):
    for choice in range(top_k):
      if not kept[t, choice]:
        continue
      e = expert_index[t, choice]
      h = _gelu(x[t] @ np.asarray(w1[e], np.float64) + b1[e])
      y[t] += weights[t, choice] * (h @ np.asarray(w2[e], np.float64) + b2[e])

  n_valid = max(int(valid.sum()), 1)
  f = np.zeros(num_experts)
  p_mean = np.zeros(num_experts)
  for t in range(num_tokens):
    if valid[t]:
      for choice in range(top_k):
        f[expert_index[t, choice]] += 1.0 / (top_k * n_valid)
      p_mean += probs[t] / n_valid
  lb = alpha * num_experts * float(np.sum(f * p_mean))
  return dict(y=y, expert_index=expert_index, weights=weights, probs=probs, dropped=dropped,
              load_balance_loss=lb)


def grouped_capacity_reference(params, x, expert_index, weights, valid, *, num_groups: int,
                               capacity_factor: float | None):
  """Single-device twin of the sharded dispatch: contiguous token groups, capacity per group
  (dropless: capacity = tokens per group)."""
  num_experts, top_k = params.w1.shape[0], expert_index.shape[1]
  tokens_local = x.shape[0] // num_groups
  capacity = (tokens_local if capacity_factor is None else
              dispatch.compute_capacity(tokens_local, num_experts, top_k, capacity_factor))
  split = lambda a: a.reshape(num_groups, tokens_local, *a.shape[1:])
  ys, dropped = jax.vmap(
      lambda x, e, w, v: dispatch.dispatch(params, x, e, w, v, capacity, impl="slots"))(
          split(x), split(expert_index), split(weights), split(valid))
  return ys.reshape(x.shape), jnp.sum(dropped)


def dense_moe(params, x, index, weights, kept):
  """Every expert on every token, masked: the autodiff reference for the dispatchers."""
  num_experts = params.w1.shape[0]
  h = jax.nn.gelu(jnp.einsum("tw,kwh->tkh", x, params.w1) + params.b1, approximate=False)
  out = jnp.einsum("tkh,khw->tkw", h, params.w2) + params.b2
  gate = jnp.sum(jax.nn.one_hot(index, num_experts) * (weights * kept)[..., None], axis=1)
  return jnp.einsum("tk,tkw->tw", gate, out)


def dense_layer(params, x, valid, *, capacity_factor=None, num_groups=1, alpha=0.01):
  """(y, load-balance loss) of a `SparseMoE`'s params (an nnx.State) through `dense_moe`,
  with the capacity of each of `num_groups` contiguous token groups (the devices of an
  expert-parallel run): differentiable like the layer."""
  num_experts = params["w1"][...].shape[0]
  probs = routing.router_probabilities(x, params["router"][...])
  index, weights = routing.top_k_routing(probs, 2)
  local = x.shape[0] // num_groups
  capacity = (local if capacity_factor is None else
              dispatch.compute_capacity(local, num_experts, 2, capacity_factor))
  split = lambda a: a.reshape(num_groups, local, *a.shape[1:])
  kept = jax.vmap(lambda i, v: dispatch.kept_within_capacity(
      dispatch.expert_positions(i, v, num_experts)[0], v, capacity)[0])(split(index), split(valid))
  experts = ExpertParams(*(params[n][...] for n in ("w1", "b1", "w2", "b2")))
  y = dense_moe(experts, x, index, weights, kept.reshape(index.shape))
  return y, routing.load_balance_loss(probs, index, valid, alpha)
