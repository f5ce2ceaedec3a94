"""Building blocks shared by the encoders, the fusion and the MoE (below both `models` and
`moe` in the import graph): activations, the initialiser, dense layers and the two-layer MLP.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

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
