"""Expert-parallel dispatch: tokens travel to their experts' devices with all_to_all.

Inside `jax.shard_map` every device holds T/n tokens (the batch is split over ('data',
'expert')) and K/E experts (E = size of 'expert'). Each device is one capacity group: it
packs its tokens into (K, C, w) slot buffers, `all_to_all` over 'expert' sends each
device the slots of its own experts from every device in its 'data' row, the local experts
run, and a second `all_to_all` brings the outputs back to be combined (GShard / V-MoE).

Dropless mode picks C at run time (`lax.switch`, the same branch on every device) as the
smallest of `dispatch.dropless_capacities` that holds the fullest expert on any device; C = T/n
always suffices (an expert is chosen at most once per token), so no token is dropped. With
E = 1 nothing needs to move, and the single-device dropless dispatcher runs on the local
tokens. `grouped_capacity_reference` is the single-device computation with the
same groups, which the sharded one must equal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from medvlmoe_jax.nn import gelu
from medvlmoe_jax.moe import dispatch
from medvlmoe_jax.moe.dispatch import ExpertParams

AXES = ("data", "expert")


def _local_experts(params: ExpertParams, x: jax.Array) -> jax.Array:
  """x (sources, K_local, C, w) through this device's experts."""
  dtype = x.dtype
  h = jnp.einsum("skcw,kwh->skch", x, params.w1.astype(dtype)) + params.b1.astype(dtype)[None, :, None]
  h = gelu(h)
  return jnp.einsum("skch,khw->skcw", h, params.w2.astype(dtype)) + params.b2.astype(dtype)[None, :, None]


def _local_capacity(tokens_local: int, num_experts: int, top_k: int, capacity_factor):
  if capacity_factor is None:
    return tokens_local
  return dispatch.compute_capacity(tokens_local, num_experts, top_k, capacity_factor)


def dispatch_expert_parallel(params: ExpertParams, x, expert_index, weights, valid, *,
                             capacity_factor: float | None, mesh=None):
  """(y (T, w), dropped) for tokens split over the current mesh's ('data', 'expert')."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  num_experts, top_k = params.w1.shape[0], expert_index.shape[1]
  n_expert, n_total = mesh.shape["expert"], mesh.size
  if x.shape[0] % n_total:
    raise ValueError(f"{x.shape[0]} routed tokens cannot be split over {n_total} devices; "
                     "make the batch size a multiple of the device count")
  tokens_local = x.shape[0] // n_total
  capacity = _local_capacity(tokens_local, num_experts, top_k, capacity_factor)

  def slots(capacity, params, x, expert_index, weights, valid, position):
    rows, dropped = dispatch.slot_rows(expert_index, position, valid, num_experts, capacity)
    buffers = dispatch.tokens_to_rows(x, rows, num_experts * capacity)
    buffers = buffers.reshape(n_expert, num_experts // n_expert, capacity, x.shape[-1])
    if n_expert > 1:
      buffers = jax.lax.all_to_all(buffers, "expert", 0, 0)   # axis 0: destination -> source
    out = _local_experts(params, buffers)
    if n_expert > 1:
      out = jax.lax.all_to_all(out, "expert", 0, 0)           # axis 0: source -> expert group
    y = dispatch.rows_to_tokens(out.reshape(num_experts * capacity, x.shape[-1]), rows, weights)
    return y, jax.lax.psum(dropped, AXES).astype(jnp.int32)

  def local(params, x, expert_index, weights, valid):
    position, count = dispatch.expert_positions(expert_index, valid, num_experts)
    if capacity_factor is not None:
      return slots(capacity, params, x, expert_index, weights, valid, position)
    if n_expert == 1:
      # Weights made varying over 'data' like the tokens, as the blocked CPU kernel's loop
      # carries and custom VJP need; the transpose of the cast sums their gradients.
      params = jax.tree.map(lambda p: jax.lax.pcast(p, "data", to="varying"), params)
      y = dispatch.dispatch_dropless(params, x, expert_index, weights, valid)
      return y, jnp.zeros((), jnp.int32)
    # The same branch on every device, as all_to_all needs: the fullest expert anywhere.
    capacities = dispatch.dropless_capacities(tokens_local, top_k, num_experts)
    branch = jnp.searchsorted(jnp.asarray(capacities), jax.lax.pmax(jnp.max(count), AXES))
    return jax.lax.switch(branch, [functools.partial(slots, c) for c in capacities],
                          params, x, expert_index, weights, valid, position)

  spec = P(AXES)
  expert_spec = ExpertParams(P("expert"), P("expert"), P("expert"), P("expert"))
  return jax.shard_map(local, mesh=mesh, in_specs=(expert_spec, spec, spec, spec, spec),
                       out_specs=(spec, P()))(params, x, expert_index, weights, valid)


def grouped_capacity_reference(params: ExpertParams, x, expert_index, weights, valid, *,
                               num_groups: int, capacity_factor: float | None):
  """Single-device twin of the sharded dispatch: contiguous token groups, capacity per group."""
  num_experts, top_k = params.w1.shape[0], expert_index.shape[1]
  tokens_local = x.shape[0] // num_groups
  capacity = _local_capacity(tokens_local, num_experts, top_k, capacity_factor)
  split = lambda a: a.reshape(num_groups, tokens_local, *a.shape[1:])
  ys, dropped = jax.vmap(
      lambda x, e, w, v: dispatch.dispatch_with_capacity(params, x, e, w, v, capacity,
                                                          impl="slots"))(
          split(x), split(expert_index), split(weights), split(valid))
  return ys.reshape(x.shape), jnp.sum(dropped)
