"""The MoE layer: parameters, routing and the dispatcher that runs the experts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.nn import INIT, MLP
from medvlmoe_jax.moe import dispatch, expert_parallel, routing
from medvlmoe_jax.moe.experts import ExpertParams


def make_dispatcher(capacity_factor: float | None, mesh=None,
                    impl: str | None = None) -> dispatch.Dispatcher:
  """Expert-parallel (`shard_map` + `all_to_all`) under a mesh of more than one device, else
  `dispatch.dispatch` with the GShard capacity for the number of tokens. `impl`: one of
  `dispatch.IMPLS` or 'auto'/None (the compile target's, `platform.moe_dispatch`)."""
  if impl not in (None, "auto") and impl not in dispatch.IMPLS:
    raise ValueError(f"model.moe.dispatch={impl!r} is not 'auto' or one of "
                     f"{sorted(dispatch.IMPLS)}")
  if mesh is not None and not mesh.empty and mesh.size > 1:
    return functools.partial(expert_parallel.dispatch_expert_parallel,
                             capacity_factor=capacity_factor, mesh=mesh, impl=impl)

  def single_device(params, x, expert_index, weights, valid, counted=None):
    num_experts, top_k = params.w1.shape[0], expert_index.shape[1]
    capacity = dispatch.compute_capacity(x.shape[0], num_experts, top_k, capacity_factor)
    limit = dispatch.capacity_limit(counted, num_experts, top_k, capacity_factor)
    return dispatch.dispatch(params, x, expert_index, weights, valid, capacity, impl, limit)
  return single_device


class SparseMoE(nnx.Module):
  """K experts (stacked weights), a float32 router and Top-k dispatch.

  Expert weights are stacked on a leading `K` axis so that expert parallelism is a sharding
  of that axis: traced under a mesh of more than one device (`jax.set_mesh`), dispatch runs
  in `shard_map` with `all_to_all` (see `make_dispatcher`). `__call__` takes tokens (T, w)
  and a validity mask (T,) and returns (y, aux) where aux holds the load-balance loss, the
  dropped-assignment count and the routing decisions for analysis. `dispatch`: the
  implementation, `model.moe.dispatch` ('auto' or one of `dispatch.IMPLS`).
  """

  def __init__(self, width: int, hidden: int, *, num_experts: int = 8, top_k: int = 2,
               capacity_factor: float | None = None, alpha: float = 0.01, dtype=jnp.float32,
               dispatch: str = "auto", rngs: nnx.Rngs):
    if not 1 <= top_k <= num_experts:
      raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    self.num_experts, self.top_k = num_experts, top_k
    self.capacity_factor, self.alpha, self.dtype = capacity_factor, alpha, dtype
    make_dispatcher(capacity_factor, impl=dispatch)     # reject an unknown name now
    self.dispatch = dispatch
    key = lambda: rngs.params()
    self.router = nnx.Param(INIT(key(), (width, num_experts), jnp.float32))
    self.w1 = nnx.Param(INIT(key(), (num_experts, width, hidden), jnp.float32))
    self.b1 = nnx.Param(jnp.zeros((num_experts, hidden), jnp.float32))
    self.w2 = nnx.Param(INIT(key(), (num_experts, hidden, width), jnp.float32))
    self.b2 = nnx.Param(jnp.zeros((num_experts, width), jnp.float32))

  def experts(self) -> ExpertParams:
    return ExpertParams(self.w1[...], self.b1[...], self.w2[...], self.b2[...])

  def __call__(self, x: jax.Array, valid: jax.Array | None = None,
               counted: jax.Array | None = None, context: jax.Array | None = None):
    """`valid` (T,): tokens that are routed (default all); `counted` (T,): tokens whose share
    of the capacity counts (default all), so that batch padding takes none. `context` (T, w):
    added to the router's input only (the modality or text the routing may depend on)."""
    valid = jnp.ones(x.shape[0], bool) if valid is None else valid.astype(bool)
    router_input = x if context is None else x + context.astype(x.dtype)
    probs = routing.router_probabilities(router_input, self.router[...])
    expert_index, weights = routing.top_k_routing(probs, self.top_k)
    dispatcher = make_dispatcher(self.capacity_factor, jax.sharding.get_abstract_mesh(),
                                 self.dispatch)
    y, dropped = dispatcher(self.experts(), x.astype(self.dtype), expert_index, weights, valid,
                            counted)
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

  def __call__(self, x: jax.Array, valid: jax.Array | None = None, counted=None, context=None):
    return self.mlp(x), {"load_balance_loss": jnp.zeros((), jnp.float32),
                         "dropped_tokens": jnp.zeros((), jnp.int32)}
