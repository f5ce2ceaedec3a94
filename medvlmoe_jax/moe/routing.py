"""Top-k routing and the load-balance loss, as pure functions on (tokens, experts) arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def router_probabilities(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """softmax(x W_r), computed in float32 whatever the compute dtype."""
  logits = jnp.dot(x.astype(jnp.float32), kernel.astype(jnp.float32))
  return jax.nn.softmax(logits, axis=-1)


def top_k_routing(probs: jax.Array, k: int = 2) -> tuple[jax.Array, jax.Array]:
  """The k most probable experts per token and their weights p_i / sum_{top-k} p.

  Returns (expert_index (T, k) int32, ordered by decreasing probability; weights (T, k)).
  Ties go to the lower expert index.
  """
  top_p, expert_index = jax.lax.top_k(probs, k)
  weights = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
  return expert_index.astype(jnp.int32), weights


def expert_assignment_share(expert_index: jax.Array, num_experts: int,
                            valid: jax.Array | None = None) -> jax.Array:
  """f_k: the share of all (valid) top-k assignments that go to expert k; sums to 1."""
  counts = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.float32).sum(axis=1)  # (T, K)
  if valid is not None:
    counts = counts * valid[:, None]
  return counts.sum(axis=0) / jnp.maximum(counts.sum(), 1.0)


def load_balance_loss(probs: jax.Array, expert_index: jax.Array,
                      valid: jax.Array | None = None, alpha: float = 0.01) -> jax.Array:
  """Switch/GShard auxiliary loss alpha * K * sum_k f_k * pbar_k.

  Equals alpha when assignments and probabilities are uniform; grows to alpha * K when the
  router collapses onto one expert. Tokens with valid == False (padding) are left out.
  """
  num_experts = probs.shape[-1]
  f = expert_assignment_share(expert_index, num_experts, valid)
  if valid is None:
    p_mean = probs.mean(axis=0)
  else:
    w = valid.astype(jnp.float32)[:, None]
    p_mean = (probs * w).sum(axis=0) / jnp.maximum(w.sum(), 1.0)
  return alpha * num_experts * jnp.sum(f * p_mean)
