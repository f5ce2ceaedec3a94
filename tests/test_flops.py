"""The analytic FLOP count (benchmark/flops.py) against XLA's on configurations where XLA's
count is honest, and against hand arithmetic at full size (not compiled)."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import pytest
from conftest import shrunk_demo_config
from flax import nnx

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.benchmark import encoders, flops
from medvlmoe_jax.platform import force_attention
from medvlmoe_jax.models.medvlmoe import build_model

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]\S*\s+([\w\-]+)\((.*?)\)(.*)$")


def _dims(text: str) -> list[int]:
  return [int(n) for n in text.split(",") if n]


def hlo_matmul_flops(hlo: str) -> float:
  """XLA's matmul FLOPs in optimised HLO text: 2 x output elements x contracted size for
  every `dot` and `convolution`, fused or not (instruction names are unique in a module)."""
  shapes, total = {}, 0.0
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, op, operands, attrs = match.groups()
    shapes[name] = _dims(shape)
    if op not in ("dot", "convolution"):
      continue
    args = re.findall(r"%([\w.\-]+)", operands)
    if op == "dot":
      contracted = _dims(re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs).group(1))
      per_output = math.prod(shapes[args[0]][i] for i in contracted)
    else:
      kernel, labels = shapes[args[1]], re.search(r"dim_labels=\w+_(\w+)->", attrs).group(1)
      per_output = math.prod(kernel) // kernel[labels.index("o")]
    total += 2.0 * math.prod(shapes[name]) * per_output
  return total


def dense_dispatch_config(granularity: str, width: int | None = None):
  """The demo model with a dispatch XLA counts as computed: 'slots' with a static capacity
  C = T (capacity factor K / top_k; no token can be dropped, an expert is chosen at most
  once per token) is one batched einsum over (K, C, w) buffers, with no lax.switch (the
  dropless variant), ragged_dot (dense expansion) or loop ('cpu_kernel', 'blocks' has none
  either but pads to whole blocks). No remat. `width`: all widths (encoders, fusion) set to
  it, MLPs 4x."""
  c = shrunk_demo_config()
  c.model.remat = "none"
  c.model.moe.update(dispatch="slots", granularity=granularity)
  c.model.moe.capacity_factor = c.model.moe.num_experts / c.model.moe.top_k
  if width is not None:
    c.model.vision.update(width=width, mlp_dim=4 * width)
    c.model.text.update(width=width, ffn_dim=4 * width)
    c.model.fusion.dim, c.model.moe.hidden = width, 4 * width
  return c


def compiled_forward(c):
  """The model's forward pass (model call) jitted and compiled for one batch, with XLA's
  attention path (plain einsums on every backend, as the GPU path without cuDNN)."""
  graphdef, state = nnx.split(build_model(c.model))
  b, seq, px = c.data.batch_size, c.data.text_max_len, c.model.vision.image_size
  fn = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a)[0])
  with force_attention("xla"):
    return fn.lower(state, jnp.zeros((b, px, px, 3)), jnp.zeros((b, seq), jnp.int32),
                    jnp.ones((b, seq), jnp.int32)).compile()


def slot_flops(c) -> float:
  """`forward_flops` with the experts counted as the slot buffers compute them: K C = K T
  rows, every slot including the empty ones, against the top_k T rows routed."""
  f = flops.forward_flops(c)
  m = c.model.moe
  return sum(f.values()) + f["moe_experts"] * (m.num_experts / m.top_k - 1)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="parses CPU HLO (GPU matmuls are cuBLAS custom calls)")
@pytest.mark.parametrize("granularity", ["sample", "token"])
def test_forward_matmul_flops_equal_xla_dots(granularity):
  """Every matmul XLA compiles for the tiny demo forward, counted from its HLO, is exactly
  what the analytic count says (once the slot padding is added)."""
  c = dense_dispatch_config(granularity)
  hlo = compiled_forward(c).as_text()
  assert " conditional(" not in hlo and " while(" not in hlo   # no switch, loop or lax.map
  assert hlo_matmul_flops(hlo) == pytest.approx(slot_flops(c), rel=1e-9)


def test_forward_flops_within_5_percent_of_xla_cost_analysis():
  """XLA's whole count, matmuls and elementwise work, at sample granularity and width 256.
  XLA also counts LayerNorm, softmax, (quick_)GELU, bias adds and the routing arithmetic,
  which the analytic count leaves out: O(L d) and O(L^2 heads) per layer against O(L d^2)
  matmuls, so their share falls as 1/width: 2.7% here (8.8% for the 64-wide demo), within
  the 5% this allows. XLA never counts fewer FLOPs than the matmuls."""
  c = dense_dispatch_config("sample", width=256)
  cost = compiled_forward(c).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  ratio = cost["flops"] / slot_flops(c)
  assert 1.0 <= ratio < 1.05, ratio


def full_config(batch: int = 1):
  """The paper's model: ViT-L/14 at 224 px, BioGPT over 64 tokens, the full head."""
  c = config_lib.defaults()
  config_lib.apply_size(c, vision="vit_l14", text="biogpt", head="full")
  c.data.batch_size, c.data.text_max_len = batch, 64
  return c


def test_full_size_encoders_by_hand():
  """ViT-L/14: 24 layers of 4 d^2 + 2 d m = 12,582,912 weights (d 1024, m 4096), i.e.
  2 x 301,989,888 x 257 tokens = 155.22 GFLOP, + attention 24 x 4 x 257^2 x 1024 = 6.49,
  + the patch convolution 2 x 256 x 588 x 1024 = 0.31: 162.02 GFLOP per image (the README's
  encoder figure). BioGPT at 64 tokens: 2 x 301,989,888 x 64 + 24 x 4 x 64^2 x 1024."""
  f = flops.forward_flops(full_config())
  assert f["vision"] == 155_222_802_432 + 6_492_880_896 + 308_281_344 == 162_023_964_672
  assert f["text"] == 38_654_705_664 + 402_653_184
  c = full_config(batch=8)
  assert flops.forward_flops(c)["vision"] == encoders.vit_flops(c.model.vision, 8)
  assert flops.forward_flops(c)["text"] == encoders.biogpt_flops(c.model.text, 8, 64)


def test_full_size_head_by_hand():
  """Projections to d = 512, one fusion block (two cross-attentions over 257 x 64 pairs), the
  modality gate, the MoE on the 1024-wide [f_v; f_t] and the classifier, per example."""
  f = flops.forward_flops(full_config())
  d, lv, lt = 512, 257, 64
  assert f["projection"] == 2 * (lv + lt) * 1024 * d
  assert f["fusion"] == 2 * 4 * (lv + lt) * d * d + 2 * 4 * lv * lt * d
  assert f["gate"] == 2 * 1024 * 2
  assert f["moe_router"] == 2 * 1024 * 8
  assert f["classifier"] == 2 * 1024 * 14


def test_moe_counts_top_k_experts_not_all():
  c = full_config(batch=32)
  per_row = 2 * 2 * 1024 * 2048              # w1 and w2 of one expert, width 2d, hidden 2048
  assert flops.forward_flops(c)["moe_experts"] == 32 * 2 * per_row    # top-2, not 8
  c.model.moe.num_experts = 16               # more experts: only the router grows
  f = flops.forward_flops(c)
  assert f["moe_experts"] == 32 * 2 * per_row and f["moe_router"] == 2 * 32 * 1024 * 16
  c.model.moe.top_k = 1
  assert flops.forward_flops(c)["moe_experts"] == 32 * per_row
  c.model.moe.update(top_k=2, granularity="token")   # every d-wide fused token is routed
  f = flops.forward_flops(c)
  assert f["moe_experts"] == 32 * (257 + 64) * 2 * 2 * 2 * 512 * 2048
  assert flops.forward_flops(c, text_tokens=10)["moe_experts"] == (
      32 * (257 + 10) * 2 * 2 * 2 * 512 * 2048)    # padding text tokens are not routed
  c.model.moe.enabled = False                # the ablation: one FFN top_k x hidden wide
  assert flops.forward_flops(c)["dense_ffn"] == f["moe_experts"]


def test_train_step_is_three_forwards():
  c = full_config(batch=32)
  forward = sum(flops.forward_flops(c).values())
  assert flops.train_step_flops(c) == 3 * forward
  # 202.18 GFLOP per example forward: the encoders' 201.08 and 1.10 for the head.
  assert flops.train_step_flops(c) == pytest.approx(3 * 32 * 202.18e9, rel=1e-4)


def test_mfu_peaks_by_exact_device_name():
  from types import SimpleNamespace

  from medvlmoe_jax.benchmark import train
  gpu = lambda kind: SimpleNamespace(platform="gpu", device_kind=kind)
  assert train.DENSE_BF16_PEAK["NVIDIA H100 PCIe"] == 756e12     # not the SXM's 989
  assert train.mfu_note(gpu("NVIDIA H100 PCIe"), "bfloat16") is None
  assert "no dense bf16 peak" in train.mfu_note(gpu("NVIDIA H100"), "bfloat16")  # no guess
  assert "bfloat16" in train.mfu_note(gpu("NVIDIA H200"), "float32")
  assert "no GPU" in train.mfu_note(SimpleNamespace(platform="cpu", device_kind="cpu"),
                                    "bfloat16")
