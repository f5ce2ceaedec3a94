"""Expert-parallel dispatch: tokens travel to their experts' devices with all_to_all.

Inside `jax.shard_map` every device holds T/n tokens (the batch is split over ('data',
'expert')) and K/E experts (E = size of 'expert'). Each device is one capacity group: it
packs its tokens into (K, C, w) slot buffers (`dispatch.slots`), `all_to_all` over 'expert'
sends each device the slots of its own experts from every device in its 'data' row, the
local experts run, and a second `all_to_all` brings the outputs back to be combined (GShard /
V-MoE). Dropless, C is picked at run time from the fullest expert on any device, so that all
devices take the same branch, as all_to_all needs; the smallest C is the mean assignments
per (device, expert), so that balanced routing computes about the active rows. With E = 1
nothing needs to move, and the single-device dispatcher (`impl`, `model.moe.dispatch`) runs
on the local tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from medvlmoe_jax.moe import dispatch
from medvlmoe_jax.moe.experts import ExpertParams, expert_mlp
from medvlmoe_jax.sharding import AXES

# The fewest rows an expert's GEMM takes in the dropless slot capacities (as on one device).
MIN_EXPERT_ROWS = 8


def dispatch_expert_parallel(params: ExpertParams, x, expert_index, weights, valid,
                             counted=None, *, capacity_factor: float | None, mesh=None,
                             impl: str | None = None):
  """(y (T, w), dropped) for tokens split over the mesh's ('data', 'expert'): a
  `dispatch.Dispatcher` once capacity_factor and mesh are bound. `impl` runs the local
  tokens when the expert axis has size 1 (see `dispatch.dispatch`); across devices tokens
  travel in slot buffers."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  num_experts, top_k = params.w1.shape[0], expert_index.shape[1]
  n_expert = mesh.shape["expert"]
  if x.shape[0] % mesh.size:
    raise ValueError(f"{x.shape[0]} routed tokens cannot be split over {mesh.size} devices; "
                     "make the batch size a multiple of the device count")

  def run(params, buffers):
    """(K, C, w) slot buffers through the experts on their devices, and back."""
    buffers = buffers.reshape(n_expert, num_experts // n_expert, *buffers.shape[1:])
    if n_expert > 1:
      buffers = jax.lax.all_to_all(buffers, "expert", 0, 0)   # axis 0: destination -> source
    out = expert_mlp(params, buffers)
    if n_expert > 1:
      out = jax.lax.all_to_all(out, "expert", 0, 0)           # axis 0: source -> expert group
    return out.reshape(num_experts, *out.shape[2:])

  def local(params, x, expert_index, weights, valid, counted):
    capacity = dispatch.compute_capacity(x.shape[0], num_experts, top_k, capacity_factor)
    # Each device is a capacity group: its own counted tokens.
    limit = dispatch.capacity_limit(counted, num_experts, top_k, capacity_factor)
    if n_expert == 1:
      # Weights made varying over 'data' like the tokens, as the CPU kernel's loop carries
      # and custom VJP need; the transpose of the cast sums their gradients.
      params = jax.tree.map(lambda p: jax.lax.pcast(p, "data", to="varying"), params)
      y, dropped = dispatch.dispatch(params, x, expert_index, weights, valid, capacity, impl,
                                     limit=limit)
    else:
      # An expert's GEMM takes C rows from each of the n_expert devices: C from the mean
      # assignments per (device, expert) up, so that balanced routing computes the active
      # rows, not C = every local token (which is rows x experts, dense).
      y, dropped = dispatch.slots(params, x, expert_index, weights, valid, capacity,
                                  limit=limit, run=run, num_experts=num_experts,
                                  fullest=lambda n: jax.lax.pmax(n, AXES),
                                  min_capacity=-(-MIN_EXPERT_ROWS // n_expert))
    return y, jax.lax.psum(dropped, AXES).astype(jnp.int32)

  spec = P(AXES)
  expert_spec = ExpertParams(P("expert"), P("expert"), P("expert"), P("expert"))
  counted = jnp.ones(x.shape[0], bool) if counted is None else counted
  return jax.shard_map(local, mesh=mesh, in_specs=(expert_spec, spec, spec, spec, spec, spec),
                       out_specs=(spec, P()))(params, x, expert_index, weights, valid, counted)
