"""Platform choices come from the compile target (medvlmoe_jax/platform.py), and the padded
call that cuDNN's fused attention gets equals unpadded attention. The compile-only GPU side
is in tests/test_deviceless.py."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from tolerance import float32_atol
from medvlmoe_jax import config as config_lib
from medvlmoe_jax import platform, sharding
from medvlmoe_jax.models import layers

CPU = platform.Target("cpu", "cpu")
H100 = platform.Target("gpu", "NVIDIA H100 80GB HBM3", 8)
TPU = platform.Target("tpu", "TPU v5 lite")


def test_attention_per_target():
  """Blocked on CPUs; cuDNN flash attention on GPUs for bf16/fp16 and the head widths it
  takes, XLA's path (with the reason) otherwise; forcing wins everywhere."""
  assert platform.attention(jnp.float32, 64, CPU) == ("blocked", "cpu")
  assert platform.attention(jnp.bfloat16, 64, H100) == ("cudnn", "fused")
  assert platform.attention(jnp.float16, 128, H100) == ("cudnn", "fused")
  impl, reason = platform.attention(jnp.float32, 64, H100)
  assert impl == "xla" and "float32" in reason
  impl, reason = platform.attention(jnp.bfloat16, 160, H100)
  assert impl == "xla" and "160" in reason
  assert platform.attention(jnp.bfloat16, 64, TPU)[0] == "xla"
  with platform.force_attention("blocked"):
    assert platform.attention(jnp.bfloat16, 64, H100) == ("blocked", "forced")
  with pytest.raises(ValueError, match="flash"):
    with platform.force_attention("flash"):
      pass


def test_moe_dispatch_and_chunking_per_target():
  small, large = 32 * 2, 3072 * 2     # assignments: tokens x top_k
  for target in (H100, TPU):
    assert platform.moe_dispatch(large, 8, True, target) == "blocks"
    assert platform.moe_dispatch(small, 8, True, target) == "slots"
    assert platform.moe_dispatch(large, 8, False, target) == "slots"
    assert platform.attention_chunk_bytes(target) is None
  assert platform.moe_dispatch(small, 8, True, CPU) == "slots"
  assert platform.moe_dispatch(large, 8, True, CPU) == "cpu_kernel"
  assert platform.attention_chunk_bytes(CPU) == platform.CPU_SCORE_CHUNK_BYTES


def test_the_traced_target_is_the_mesh():
  """Inside a jitted function and a shard_map traced under a mesh, the target is the mesh's;
  outside any mesh, the default device's."""
  mesh = sharding.make_mesh(config_lib.defaults().mesh, 8)
  seen = []

  def f(x):
    seen.append(platform.current())
    inner = lambda y: (seen.append(platform.current()), y)[1]
    return jax.shard_map(inner, mesh=mesh, in_specs=sharding.BATCH, out_specs=sharding.BATCH)(x)

  with jax.set_mesh(mesh):
    jax.jit(f)(jnp.ones(mesh.size))
  assert [t.platform for t in seen] == ["cpu", "cpu"]
  assert seen[0] == platform.of_mesh(mesh)
  assert platform.current() == platform.Target(jax.devices()[0].platform,
                                               jax.devices()[0].device_kind, 1)


def test_resolve_lists_the_cpu_choices():
  c = config_lib.defaults()
  mesh = sharding.make_mesh(c.mesh, 8)
  r = platform.resolve(c.model, mesh, 32, 64)
  assert r["attention"] == dict.fromkeys(
      ["vision_self", "text_causal", "fusion_vision_from_text", "fusion_text_from_vision"],
      "blocked")
  assert r["moe_dispatch"] == "slots" and r["target"]["platform"] == "cpu"
  assert r["attention_chunk_bytes"] == platform.CPU_SCORE_CHUNK_BYTES
  c.model.moe.granularity = "token"
  assert platform.resolve(c.model, mesh, 32, 64)["moe_dispatch"] == "cpu_kernel"


def test_no_other_module_asks_for_the_backend():
  """Every platform choice lives in platform.py: no other module of the library or the
  launch scripts reads jax.default_backend()."""
  found = []
  for top in ("medvlmoe_jax", "launch"):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for name in (n for n in files if n.endswith(".py")):
        path = os.path.join(folder, name)
        if path.endswith(os.path.join("medvlmoe_jax", "platform.py")):
          continue
        with open(path) as f:
          tree = ast.parse(f.read())
        found += [f"{os.path.relpath(path, ROOT)}:{n.lineno}" for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and n.attr == "default_backend"]
  assert not found, found


# (Lq, Lk, causal, key padding): every site of the full model, odd lengths included.
SITES = {"vit_self_257": (257, 257, False, False), "biogpt_64": (64, 64, True, True),
         "text_odd_33": (33, 33, True, True), "fusion_v_from_t": (257, 64, False, True),
         "fusion_t_from_v": (64, 257, False, False), "multiscale_771": (771, 64, False, True)}


@pytest.mark.parametrize("site", sorted(SITES))
@pytest.mark.float32_parity
def test_padded_fused_call_equals_unpadded_attention(site):
  """The call cuDNN gets (lengths padded to even, padding masked by sequence lengths, padded
  query rows dropped) run with XLA's implementation equals unpadded attention with the full
  boolean mask: values within 1e-6; gradients (sums over up to 771 rows, magnitudes up to
  ~20) within what float32 allows for such sums (tests/tolerance.py)."""
  lq, lk, causal, padded = SITES[site]
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(3, lq, 2, 8)) / 3, jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(3, lk, 2, 8)), jnp.float32) for _ in range(2))
  key_mask = None
  if padded:
    lengths = np.array([lk, lk - 5, 1])
    key_mask = jnp.asarray(np.arange(lk)[None] < lengths[:, None])

  def fused(q, k, v):
    return layers.fused_attention(q, k, v, key_mask=key_mask, causal=causal,
                                  implementation="xla")

  def reference(q, k, v):
    heads_first = lambda t: t.transpose(0, 2, 1, 3)
    mask = layers.full_mask(lq, lk, key_mask=key_mask, causal=causal)
    return heads_first(layers.attention_core(heads_first(q), heads_first(k), heads_first(v),
                                             mask))

  out, ref = fused(q, k, v), reference(q, k, v)
  assert out.shape == ref.shape == (3, lq, 2, 8)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  loss = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))
  for g, r in zip(loss(fused)(q, k, v), loss(reference)(q, k, v)):
    np.testing.assert_allclose(g, r, atol=float32_atol(r, max(lq, lk)))
