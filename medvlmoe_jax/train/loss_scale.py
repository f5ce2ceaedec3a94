"""Dynamic loss scaling for float16 compute (bfloat16 and float32 need none).

The loss is multiplied by `scale` before differentiation; gradients are divided by it. A
step with non-finite gradients is skipped and halves the scale; `growth_interval` finite
steps in a row double it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class DynamicLossScale:
  scale: jax.Array
  good_steps: jax.Array
  growth_interval: int = struct.field(pytree_node=False, default=2000)

  @classmethod
  def create(cls, initial: float, growth_interval: int) -> "DynamicLossScale":
    return cls(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32), growth_interval)

  def update(self, grads_finite: jax.Array) -> "DynamicLossScale":
    grow = self.good_steps + 1 >= self.growth_interval
    scale = jnp.where(grads_finite, jnp.where(grow, self.scale * 2.0, self.scale),
                      jnp.maximum(self.scale / 2.0, 1.0))
    good = jnp.where(grads_finite & ~grow, self.good_steps + 1, 0)
    return self.replace(scale=scale, good_steps=good.astype(jnp.int32))


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
