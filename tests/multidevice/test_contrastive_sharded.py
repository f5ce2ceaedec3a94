"""InfoNCE on a batch sharded over 8 devices is the global-batch loss: it equals the
single-device result (loss and gradients), and differs from the mean of per-shard losses,
so the negatives come from every device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medvlmoe_jax import sharding
from medvlmoe_jax.models.medvlmoe import LOG_SCALE_INIT
from medvlmoe_jax.train.contrastive import info_nce

# Float32 results compared to ~1e-6: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity

B, D = 32, 16
MESHES = [(8, 1), (2, 4), (4, 2), (1, 8)]


def mesh_of(shape):
  cfg = ml_collections.ConfigDict(dict(data=shape[0], expert=shape[1]))
  return sharding.make_mesh(cfg, num_experts=8)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(B, D)).astype(np.float32)
  txt = (0.7 * img + rng.normal(size=(B, D))).astype(np.float32)
  valid = np.arange(B) % 5 != 2
  return img, txt, valid


LOSS_AND_GRAD = jax.jit(jax.value_and_grad(info_nce, argnums=(0, 1, 2)))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", MESHES)
def test_sharded_info_nce_is_the_global_batch_loss(shape, masked):
  img, txt, valid = batch()
  valid = valid if masked else None
  log_scale = jnp.float32(LOG_SCALE_INIT)
  ref_loss, ref_grads = jax.device_get(LOSS_AND_GRAD(img, txt, log_scale, valid))

  mesh = mesh_of(shape)
  put = lambda x: None if x is None else jax.device_put(x, sharding.batch_sharding(mesh))
  img_s, txt_s, valid_s = put(img), put(txt), put(valid)
  rows = sorted({(s.index[0].start, s.index[0].stop) for s in img_s.addressable_shards})
  assert len(rows) == 8 and all(b - a == B // 8 for a, b in rows)   # really split
  with jax.set_mesh(mesh):
    loss, grads = jax.device_get(LOSS_AND_GRAD(img_s, txt_s, log_scale, valid_s))

  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)
  assert all(np.any(np.asarray(g) != 0) for g in grads)

  # What each device alone would compute: its own rows against its own rows only.
  local = [float(info_nce(img[a:b], txt[a:b], log_scale, None if valid is None else valid[a:b]))
           for a, b in rows]
  assert abs(float(loss) - np.mean(local)) > 0.1
  # Fewer negatives make the task easier: the local losses sit far below the global one.
  assert np.mean(local) < float(loss) - 0.5
