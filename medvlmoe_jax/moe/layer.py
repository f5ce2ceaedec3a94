"""The MoE layer: parameters only; the math lives in `routing` and `dispatch`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.nn import INIT, MLP
from medvlmoe_jax.moe import dispatch, expert_parallel, routing



class SparseMoE(nnx.Module):
  """K experts (stacked weights), a float32 router and Top-k dispatch.

  Expert weights are stacked on a leading `K` axis so that expert parallelism is a sharding
  of that axis: traced under a mesh of more than one device (`jax.set_mesh`), dispatch runs
  in `shard_map` with `all_to_all` (see `expert_parallel`); otherwise on one device. `__call__` takes tokens (T, w) and a validity mask (T,) and returns
  (y, aux) where aux holds the load-balance loss, the dropped-assignment count and the
  routing decisions for analysis.
  """

  def __init__(self, width: int, hidden: int, *, num_experts: int = 8, top_k: int = 2,
               capacity_factor: float | None = None, alpha: float = 0.01, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if not 1 <= top_k <= num_experts:
      raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    self.num_experts, self.top_k = num_experts, top_k
    self.capacity_factor, self.alpha, self.dtype = capacity_factor, alpha, dtype
    key = lambda: rngs.params()
    self.router = nnx.Param(INIT(key(), (width, num_experts), jnp.float32))
    self.w1 = nnx.Param(INIT(key(), (num_experts, width, hidden), jnp.float32))
    self.b1 = nnx.Param(jnp.zeros((num_experts, hidden), jnp.float32))
    self.w2 = nnx.Param(INIT(key(), (num_experts, hidden, width), jnp.float32))
    self.b2 = nnx.Param(jnp.zeros((num_experts, width), jnp.float32))

  def experts(self) -> dispatch.ExpertParams:
    return dispatch.ExpertParams(self.w1[...], self.b1[...], self.w2[...], self.b2[...])

  def __call__(self, x: jax.Array, valid: jax.Array | None = None):
    valid = jnp.ones(x.shape[0], bool) if valid is None else valid.astype(bool)
    probs = routing.router_probabilities(x, self.router[...])
    expert_index, weights = routing.top_k_routing(probs, self.top_k)
    x = x.astype(self.dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
      y, dropped = expert_parallel.dispatch_expert_parallel(
          self.experts(), x, expert_index, weights, valid, capacity_factor=self.capacity_factor)
    elif self.capacity_factor is None:
      y = dispatch.dispatch_dropless(self.experts(), x, expert_index, weights, valid)
      dropped = jnp.zeros((), jnp.int32)
    else:
      capacity = dispatch.compute_capacity(x.shape[0], self.num_experts, self.top_k,
                                           self.capacity_factor)
      y, dropped = dispatch.dispatch_with_capacity(self.experts(), x, expert_index, weights,
                                                   valid, capacity)
    aux = {
        "load_balance_loss": routing.load_balance_loss(probs, expert_index, valid, self.alpha),
        "dropped_tokens": dropped,
        "expert_index": expert_index,
        "expert_weights": weights,
        "expert_share": routing.expert_assignment_share(expert_index, self.num_experts, valid),
    }
    return y, aux


class DenseFFN(nnx.Module):
  """The `moe.enabled=False` ablation: one FFN as wide as the top_k active experts."""

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.mlp = MLP(width, hidden, "gelu", dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, valid: jax.Array | None = None):
    return self.mlp(x), {"load_balance_loss": jnp.zeros((), jnp.float32),
                         "dropped_tokens": jnp.zeros((), jnp.int32)}
