"""Every platform-dependent choice, made from the devices a step is compiled for
(docs/design.md §10).

Steps are traced under `jax.set_mesh(mesh)` (`train.step`), and the abstract mesh carries
the platform and device kind of its devices, compile-only ones included (a deviceless
compile for NVIDIA GPUs on a CPU host, `benchmark/deviceless.py`). So a choice read here at
tracing follows the compile target, never the host's `jax.default_backend()`; no other
module of the library asks which backend it runs on (tests/test_platform.py checks).

The choices: the attention implementation (`attention`), the batch chunking of the CPU's
blocked attention (`attention_chunk_bytes`) and the MoE's `dispatch: auto`
(`moe_dispatch`). `resolve` lists them for a model config, for the run's start line and
`summary.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("blocked", "xla", "cudnn")
_forced_attention: str | None = None


@dataclasses.dataclass(frozen=True)
class Target:
  """What a step is compiled for: 'cpu' | 'gpu' | 'tpu', the device kind ('NVIDIA H100
  80GB HBM3', 'cpu', ...) and the device count."""
  platform: str
  device_kind: str
  num_devices: int = 1


def current() -> Target:
  """The target of the step being traced: the mesh set by `jax.set_mesh` (inside `jit` and
  `shard_map` too), else the default device (eager calls, a model applied outside a step)."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  if device is not None:
    return Target(device.platform, device.device_kind, mesh.size)
  default = jax.devices()[0]
  return Target(default.platform, default.device_kind, 1)


def of_mesh(mesh) -> Target:
  """The target of a concrete mesh (its first device stands for all: meshes are uniform)."""
  device = mesh.devices.flat[0]
  return Target(device.platform, device.device_kind, int(mesh.size))


# --- attention ------------------------------------------------------------------------

@contextlib.contextmanager
def force_attention(implementation: str):
  """Trace attention with `implementation` whatever the target (tests, benchmarks). It acts
  at tracing: a function jit has already traced keeps what it was traced with."""
  global _forced_attention
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} is not one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")
  previous, _forced_attention = _forced_attention, implementation
  try:
    yield
  finally:
    _forced_attention = previous


def attention(dtype, head_dim: int, target: Target | None = None) -> tuple[str, str]:
  """(implementation, reason). CPUs: 'blocked' (faster there than
  `jax.nn.dot_product_attention`'s XLA path: `benchmark/memory.py --time_attention`). NVIDIA
  GPUs: cuDNN's fused flash attention for bf16/fp16 and head_dim a multiple of 8 up to 128
  (JAX 0.10's limit off Hopper; `implementation=None` would pick XLA's path), XLA's path
  otherwise, with the reason. Other accelerators: XLA's path."""
  if _forced_attention is not None:
    return _forced_attention, "forced"
  target = target or current()
  if target.platform == "cpu":
    return "blocked", "cpu"
  if target.platform != "gpu":
    return "xla", f"no fused attention wired for {target.platform}"
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    return "xla", f"cuDNN attention takes bfloat16/float16, not {jnp.dtype(dtype).name}"
  if head_dim % 8 or head_dim > 128:
    return "xla", f"cuDNN attention takes head_dim a multiple of 8 up to 128, not {head_dim}"
  return "cudnn", "fused"


_logged: set = set()


def log_fallback(site: str, implementation: str, reason: str) -> None:
  """One log line per site and reason where a GPU site does not get fused attention."""
  if (site, reason) not in _logged:
    _logged.add((site, reason))
    log.warning("attention at %s: %s (%s)", site, implementation, reason)


# Score tensors above this many bytes are computed a batch chunk at a time on CPUs, so that
# the float32 logits -> softmax -> probs passes stay in cache (a ViT-L/14 image has 4 MB of
# scores; 8 images at once miss a 32 MB L3 and run ~2x slower).
CPU_SCORE_CHUNK_BYTES = 4 * 2**20


def attention_chunk_bytes(target: Target | None = None) -> int | None:
  """Batch chunking of the blocked attention: on CPUs only (accelerators fuse attention
  without the help)."""
  return CPU_SCORE_CHUNK_BYTES if (target or current()).platform == "cpu" else None


# --- MoE dispatch ---------------------------------------------------------------------

# On CPU, up to this many rows per expert (top_k * tokens / K) the experts' time is spent
# reading weights: slicing one expert's weights costs as much as its matmuls, and the batched
# matmul over (K, C, w) slot buffers, which reads them in place, is the fastest layout.
SMALL_ROWS_PER_EXPERT = 32


def moe_dispatch(assignments: int, num_experts: int, dropless: bool,
                 target: Target | None = None) -> str:
  """`model.moe.dispatch = auto` for `assignments` (tokens x top_k) on one device.
  Accelerators: 'blocks' dropless, since `ragged_dot`'s default lowering (CPU and GPU) is a
  dense dot of every row with every expert: at token granularity (3072 tokens)
  `benchmark.py moe` counts 7.8 x the active FLOPs for 'ragged_dot' on CPU, 1.15 x for
  'blocks'; 'slots' with a capacity (K C rows, weights read in place). Small inputs
  (<= SMALL_ROWS_PER_EXPERT rows per expert, e.g. sample granularity) take 'slots' on every
  target: reading each expert's weights once dominates there, and 'blocks' copies them per
  block (CPU: 4.9 x slower than 'slots' at 32 examples; not yet measured on a GPU). CPU,
  larger inputs: 'cpu_kernel' (with a capacity on the kept rows: it computes no empty slot),
  the fastest there in the same benchmark. Across an expert axis of several devices tokens
  always travel in slot buffers (`moe/expert_parallel.py`)."""
  if assignments / num_experts <= SMALL_ROWS_PER_EXPERT:
    return "slots"
  if (target or current()).platform != "cpu":
    return "blocks" if dropless else "slots"
  return "cpu_kernel"


# --- the resolved choices of a run ----------------------------------------------------

def attention_sites(model_cfg) -> dict:
  """The head width of each attention site the model config has."""
  sites = {"vision_self": model_cfg.vision.width // model_cfg.vision.heads}
  if model_cfg.text.enabled and not model_cfg.vision_only:
    sites["text_causal"] = model_cfg.text.width // model_cfg.text.heads
    if model_cfg.fusion.enabled:
      head_dim = model_cfg.fusion.dim // model_cfg.fusion.heads
      sites.update(fusion_vision_from_text=head_dim, fusion_text_from_vision=head_dim)
  return sites


def resolve(model_cfg, mesh, batch_size: int, text_len: int) -> dict:
  """The platform choices a run's steps make on `mesh` for `model_cfg` at `batch_size`
  examples of `text_len` tokens, as data."""
  target = of_mesh(mesh)
  attention_choice = {}
  for site, head_dim in attention_sites(model_cfg).items():
    impl, reason = attention(model_cfg.dtype, head_dim, target)
    attention_choice[site] = impl if reason in ("fused", "cpu") else f"{impl} ({reason})"
  moe = model_cfg.moe
  dispatch = moe.get("dispatch", "auto")
  if moe.enabled and dispatch == "auto":
    expert_axis = mesh.shape.get("expert", 1)
    per_device = batch_size // max(1, mesh.size)
    if moe.granularity == "token":   # every fused token: vision tokens + text positions
      scales = max(1, len(model_cfg.vision.get("feature_layers", ())))
      patches = (model_cfg.vision.image_size // model_cfg.vision.patch_size) ** 2
      per_device *= scales * (patches + 1) + (text_len if model_cfg.text.enabled else 0)
    dispatch = ("slots (all_to_all over 'expert')" if expert_axis > 1 else
                moe_dispatch(per_device * moe.top_k, moe.num_experts,
                             moe.get("capacity_factor") is None, target))
  return {"target": dataclasses.asdict(target), "attention": attention_choice,
          "attention_chunk_bytes": attention_chunk_bytes(target),
          "moe_dispatch": dispatch if moe.enabled else "none (moe.enabled=False)"}
