"""Building blocks shared by the encoders, the fusion and the MoE (below both `models` and
`moe` in the import graph): activations, the initialiser, dense layers, the two-layer MLP and
per-layer rematerialisation.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from medvlmoe_jax.config import REMAT_POLICIES, ConfigError

INIT = nnx.initializers.normal(stddev=0.02)


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as torch.nn.GELU() and BioGPT compute it."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": gelu,
}


def dense(d_in: int, d_out: int, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=INIT, rngs=rngs)


class MLP(nnx.Module):
  """fc1 -> activation -> fc2."""

  def __init__(self, width: int, hidden: int, activation: str, *, dtype, rngs: nnx.Rngs):
    self.activation = activation
    self.fc1 = dense(width, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = dense(hidden, width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


# `model.remat`: what a layer keeps for the backward pass. 'none' keeps every activation,
# 'full' only the layer's inputs (the forward pass runs again inside the backward); the
# others are `jax.checkpoint_policies` (e.g. 'dots_with_no_batch_dims_saveable' keeps the
# projection and MLP matmul outputs and recomputes attention and the elementwise work).
def check_remat(policy: str) -> str:
  if policy not in REMAT_POLICIES:
    raise ConfigError(f"model.remat={policy!r} is not one of {REMAT_POLICIES}")
  return policy


def remat(fn: Callable, policy: str) -> Callable:
  """`fn(module, *args)` rematerialised under `policy` (`nnx.remat`: the module's parameters
  and their paths are unchanged, so checkpoints and path rules still match)."""
  if check_remat(policy) == "none":
    return fn
  saveable = None if policy == "full" else getattr(jax.checkpoint_policies, policy)
  return nnx.remat(fn, policy=saveable)
