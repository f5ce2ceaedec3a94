"""The small MoE layer the single-device and the 8-device MoE tests share."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from medvlmoe_jax.moe.layer import SparseMoE

K, W, H = 8, 12, 16


def make_layer(capacity_factor=None, seed=0, dispatch="auto"):
  layer = SparseMoE(W, H, num_experts=K, top_k=2, capacity_factor=capacity_factor,
                    dispatch=dispatch, rngs=nnx.Rngs(params=seed))
  rng = np.random.default_rng(seed)
  # Larger router weights than the init so that routing is far from uniform.
  layer.router[...] = jnp.asarray(rng.normal(0, 1.0, (W, K)), jnp.float32)
  layer.b1[...] = jnp.asarray(rng.normal(0, 0.1, (K, H)), jnp.float32)
  layer.b2[...] = jnp.asarray(rng.normal(0, 0.1, (K, W)), jnp.float32)
  return layer
