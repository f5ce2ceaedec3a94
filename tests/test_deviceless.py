"""The GPU build, compiled on this CPU for compile-only NVIDIA GPUs (benchmark/deviceless.py):
the platform choices follow the mesh's devices, every attention site gets cuDNN's fused
attention in bf16 and fp16 at odd lengths, the experts travel by all_to_all, and the paper's
recipe compiles and fits on 8x H100. Needs the gpu-compile extra (CI installs it)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT

pytest.importorskip("jax_plugins.xla_cuda12", reason="needs the gpu-compile extra")
pytestmark = pytest.mark.gpu_compile

from medvlmoe_jax import platform, sharding   # noqa: E402
from medvlmoe_jax.benchmark import deviceless   # noqa: E402

SITES = set(deviceless.SITES)


def small_config(dtype="bfloat16", text_len=32, feature_layers=()):
  """configs/chestxray14.py:small (tiny encoders, the full fusion + MoE head, 65 vision
  tokens: an odd length) at `dtype`."""
  sys.path.insert(0, ROOT)
  from configs import chestxray14
  c = chestxray14.get_config("small")
  c.model.dtype = dtype
  c.data.text_max_len = text_len
  c.model.vision.feature_layers = feature_layers
  return c


def test_a_gpu_mesh_and_a_cpu_mesh_make_their_own_choices():
  """The same model config resolves to cuDNN attention and expert-parallel slots on 8
  compile-only H100s, to blocked attention on the host's CPU; inside a step traced under the
  GPU mesh the target is the GPU, on this CPU host."""
  c = small_config()
  gpu_mesh = sharding.make_mesh(c.mesh, 8, deviceless.gpu_devices("h100_sxm", 8))
  cpu_mesh = sharding.make_mesh(c.mesh, 8, jax.devices()[:1])
  gpu = platform.resolve(c.model, gpu_mesh, 32, 32)
  cpu = platform.resolve(c.model, cpu_mesh, 32, 32)
  assert gpu["target"] == {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3",
                           "num_devices": 8}
  assert set(gpu["attention"]) == SITES and set(gpu["attention"].values()) == {"cudnn"}
  assert gpu["moe_dispatch"] == "slots (all_to_all over 'expert')"
  assert gpu["attention_chunk_bytes"] is None
  assert set(cpu["attention"].values()) == {"blocked"} and cpu["moe_dispatch"] == "slots"
  assert cpu["attention_chunk_bytes"] == platform.CPU_SCORE_CHUNK_BYTES
  seen = []
  with jax.set_mesh(gpu_mesh):
    jax.jit(lambda x: (seen.append(platform.current()), x)[1]).trace(
        jax.ShapeDtypeStruct((8,), jnp.float32))
  assert seen == [platform.of_mesh(gpu_mesh)] and seen[0].platform == "gpu"
  c.model.dtype = "float32"
  reason = platform.resolve(c.model, gpu_mesh, 32, 32)["attention"]["vision_self"]
  assert reason.startswith("xla (") and "float32" in reason


@pytest.mark.parametrize("dtype,text_len,feature_layers",
                         [("bfloat16", 32, ()), ("float16", 31, (1, 2))])
@pytest.mark.parametrize("step", ["train", "eval"])
def test_small_model_compiles_with_fused_attention_everywhere(dtype, text_len, feature_layers,
                                                              step):
  """bf16 and fp16 (dynamic loss scaling), 65 vision tokens, an odd text length and two
  visual scales: cuDNN fused attention at all four sites, all_to_all over 'expert'."""
  row, = deviceless.compile_steps(small_config(dtype, text_len, feature_layers), "h100_sxm", 8,
                                  (step,))
  assert row["compiled"], row["error"]
  assert all(row["fused_attention_calls"][s] > 0 for s in SITES), row["fused_attention_calls"]
  assert row["fused_attention_calls"].get("unknown", 0) == 0
  assert row["all_to_all"] > 0 and row["fits"]


def test_unfused_dtype_falls_back_and_says_why(caplog):
  """float32 on a GPU: XLA's attention, one log line per site naming the reason."""
  platform._logged.clear()
  with caplog.at_level("WARNING", logger="medvlmoe_jax.platform"):
    row, = deviceless.compile_steps(small_config("float32"), "h100_sxm", 8, ("eval",))
  assert row["compiled"], row["error"]
  assert sum(row["fused_attention_calls"].values()) == 0
  lines = [r.getMessage() for r in caplog.records]
  for site in SITES:
    assert any(site in m and "float32" in m for m in lines), lines


@pytest.mark.slow
@pytest.mark.parametrize("step", ["train", "eval"])
def test_paper_recipe_compiles_and_fits_on_8_h100(step):
  """configs/chestxray14.py (ViT-L/14 + BioGPT + head, bf16, batch 32 / eval 64) on 8x H100
  SXM: compiles, fits in JAX's 75% of 80 GB, fused attention at every site and layer, the
  experts' tokens by all_to_all, and a dropless dispatch whose smallest compiled expert GEMM
  has the active rows at balanced routing (top_k x batch / K) and whose largest has at most
  the whole batch (no rows x experts expansion)."""
  sys.path.insert(0, ROOT)
  from configs import chestxray14
  c = chestxray14.get_config()
  row, = deviceless.compile_steps(c, "h100_sxm", 8, (step,))
  assert row["compiled"], row["error"]
  assert row["fits"] and row["peak_gb_per_device"] < 0.75 * 80
  passes = 3 if step == "train" else 1    # forward, its remat recomputation, backward
  calls = row["fused_attention_calls"]
  assert calls["vision_self"] == passes * c.model.vision.layers
  assert calls["text_causal"] == passes * c.model.text.layers
  assert calls["fusion_vision_from_text"] == calls["fusion_text_from_vision"] == \
      (2 if step == "train" else 1)
  assert row["all_to_all"] > 0
  assert row["moe_dispatch"] == "slots (all_to_all over 'expert')"
  batch = row["batch"]
  rows = row["expert_gemm_rows"]
  assert min(rows) == c.model.moe.top_k * batch // c.model.moe.num_experts, rows
  assert max(rows) <= batch, rows
