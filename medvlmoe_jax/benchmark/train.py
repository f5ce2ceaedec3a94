"""Train-step speed and memory for three model sizes, on synthetic data through the real
input pipeline and the real jitted step.

For each size: compile time (lower + compile of the train step), the compiled step alone on
a batch already on the device ("compute"), and the training loop as `trainer.py` runs it
(next batch from the Grain iterator, `put_batch`, step, metrics kept on the device) over the
same number of steps. The share of the loop spent outside compiled compute is
1 - compute / loop (JAX dispatches asynchronously, so the next batch is read while the step
runs; a share near zero, or slightly negative from noise, means the host keeps up).

Model FLOPs per step (`model_gflop_per_step`) are the analytic count of `benchmark/flops.py`:
3 x the forward matmuls, top_k experts per routed row, no remat recomputation, no optimizer.
Achieved GFLOP/s and MFU use it: MFU = model FLOPs / (compute time x devices x the device's
dense bf16 peak), for bfloat16 runs on a device listed in `DENSE_BF16_PEAK`. XLA's count for
the compiled step (`xla_gflop_per_step`) is kept for reference only: it adds the optimizer,
remat recomputation, elementwise work and whatever the MoE dispatch pads or expands (empty
slots, `lax.switch` at its largest branch, ragged_dot's dense expansion, a loop body once).
XLA peak MB is the compile's buffer assignment (`medvlmoe_jax.benchmark.memory` measures the
full step at batch 32 without running it).
"""

from __future__ import annotations

import resource
import time

import jax
import ml_collections
import numpy as np

from medvlmoe_jax import platform
from medvlmoe_jax import config as config_lib
from medvlmoe_jax import sharding
from medvlmoe_jax.benchmark import flops as flops_lib
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.train.trainer import create_experiment

# Dense bf16 tensor-core peak FLOP/s per device, from NVIDIA's data sheets (dense: no 2:4
# sparsity, half the figure the sheets print with it), keyed by `device_kind` exactly as JAX
# reports it (the CUDA device name). Exact names, not substrings: "H100" would give an H100
# PCIe the SXM figure. A device not listed gets no MFU rather than a guess; add it here from
# its data sheet.
DENSE_BF16_PEAK = {
    "NVIDIA H100 80GB HBM3": 989e12,    # H100 SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,              # H200 SXM
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L4": 121e12,
}
MFU_DTYPES = ("bfloat16",)   # the peak is the bf16 one: a float32 run's MFU would mislead


def mfu_note(device, dtype: str) -> str | None:
  """Why no MFU is reported for this run (None when it is)."""
  if device.platform != "gpu":
    return f"no GPU on this machine ({device.platform}): MFU not measured"
  if dtype not in MFU_DTYPES:
    return f"MFU only for bfloat16 runs (this one: {dtype}): the peak is the bf16 one"
  if device.device_kind not in DENSE_BF16_PEAK:
    return (f"no dense bf16 peak listed for {device.device_kind!r} (DENSE_BF16_PEAK in "
            "benchmark/train.py): MFU not reported")
  return None


def size_config(demo: ml_collections.ConfigDict, size: str, dtype: str = "float32",
                batch: int | None = None) -> ml_collections.ConfigDict:
  """From the demo config (configs/demo.py): tiny is its model; small has 4-layer 256-wide
  encoders at 112 px and the full fusion + MoE head; full is the paper's ViT-L/14 + BioGPT +
  full head (batch 2 on a CPU, 32 elsewhere)."""
  c = demo.copy_and_resolve_references()
  c.model.dtype = dtype
  if size == "small":
    c.model.vision.update(width=256, layers=4, heads=4, mlp_dim=1024, patch_size=16, image_size=112)
    c.model.text.update(width=256, layers=4, heads=4, ffn_dim=1024)
    c.data.image_size = 112
    c.data.batch_size = 32
  elif size == "full":
    config_lib.apply_size(c, vision="vit_l14", text="biogpt", head="full")
    c.data.image_size = 224
    c.data.text_max_len = 64
    c.model.fusion.max_text_len = 64
    c.data.batch_size = 2 if platform.current().platform == "cpu" else 32
  elif size != "tiny":
    raise ValueError(f"unknown size {size!r} (tiny, small, full)")
  if size != "tiny":
    h = config_lib.HEAD_PRESETS["full"]
    c.model.fusion.dim, c.model.fusion.heads, c.model.moe.hidden = h["dim"], h["heads"], h["moe_hidden"]
  if batch is not None:
    c.data.batch_size = batch
  c.data.synthetic.update(num_train=max(8 * c.data.batch_size, 64), num_val=8, num_test=8)
  c.data.eval_batch_size = c.data.batch_size
  return c


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {"arguments_mb": m.argument_size_in_bytes / 2**20,
          "temporaries_mb": m.temp_size_in_bytes / 2**20,
          "peak_mb": (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                      - m.alias_size_in_bytes) / 2**20}


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def run_size(demo, size: str, steps: int, rounds: int, dtype: str = "float32",
             batch: int | None = None) -> dict:
  config = size_config(demo, size, dtype, batch)
  exp = create_experiment(config)
  train_fn, _ = exp.jitted()
  c = config.data
  it = pipeline.train_iterator(exp.data.splits["train"], c.batch_size, seed=config.seed,
                               rows=sharding.process_rows(exp.mesh, c.batch_size),
                               augment_cfg=c.augment)
  fixed = sharding.put_batch(next(it), exp.mesh)
  with jax.set_mesh(exp.mesh):
    start = time.perf_counter()
    compiled = train_fn.__wrapped__.lower(exp.state, fixed).compile()
    compile_s = time.perf_counter() - start
  xla_flops = _flops(compiled)
  state = exp.state

  def compute():
    nonlocal state
    for _ in range(steps):
      state, m = compiled(state, fixed)
    jax.block_until_ready((state, m))

  def loop():
    nonlocal state
    pending = []
    for _ in range(steps):
      state, m = compiled(state, sharding.put_batch(next(it), exp.mesh))
      pending.append(m)
    jax.device_get(pending)      # the trainer fetches metrics every log_every_steps
    jax.block_until_ready(state)

  def data():
    for _ in range(steps):
      next(it)

  compute()                       # warm up both paths (first execution, allocator)
  loop()
  samples = {"compute": [], "loop": [], "data": []}
  for _ in range(rounds):
    for name, fn in (("compute", compute), ("loop", loop), ("data", data)):
      t0 = time.perf_counter()
      fn()
      samples[name].append((time.perf_counter() - t0) / steps)
  t = {k: float(np.median(v)) for k, v in samples.items()}
  result = {"size": size, "batch": c.batch_size, "dtype": dtype,
            "parameters": int(sum(exp.param_counts.values())), "compile_s": compile_s,
            "compute_step_ms": 1e3 * t["compute"], "loop_step_ms": 1e3 * t["loop"],
            "data_batch_ms": 1e3 * t["data"], "examples_per_s": c.batch_size / t["loop"],
            "outside_compute_share": 1 - t["compute"] / t["loop"],
            "memory": _memory(compiled), "max_rss_mb": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024}
  model_flops = flops_lib.train_step_flops(config)
  result["model_gflop_per_step"] = model_flops / 1e9
  result["achieved_gflops"] = model_flops / t["compute"] / 1e9
  if xla_flops is not None:
    result["xla_gflop_per_step"] = xla_flops / 1e9
  device = jax.devices()[0]
  if mfu_note(device, dtype) is None:
    peak = exp.mesh.size * DENSE_BF16_PEAK[device.device_kind]   # the step runs on the mesh
    result["mfu"] = model_flops / t["compute"] / peak
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    result["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
  del exp, state, compiled
  return result


def run(demo: ml_collections.ConfigDict, sizes=("tiny", "small", "full"),
        steps: int | None = None, rounds: int = 3, dtype: str = "float32",
        full_batch: int | None = None) -> dict:
  """`demo`: configs/demo.py's config, which the three sizes start from."""
  results = {"config": dict(backend=platform.current().platform, devices=jax.device_count(),
                            device_kind=jax.devices()[0].device_kind, rounds=rounds),
             "sizes": []}
  for size in sizes:
    n = steps or {"tiny": 16, "small": 4, "full": 2}[size]
    results["sizes"].append(run_size(demo, size, n, rounds, dtype,
                                      full_batch if size == "full" else None))
  note = mfu_note(jax.devices()[0], dtype)
  if note is not None:
    results["mfu_note"] = note
  return results


def table(results: dict) -> str:
  c = results["config"]
  lines = [f"Train step on {c['devices']} {c['backend']} device(s) ({c['device_kind']}); "
           "compute = compiled step on a device batch, loop = trainer loop (data + host + step)",
           f"{'size':<6} {'params':>8} {'batch':>5} {'dtype':>8} {'compile s':>9} "
           f"{'compute ms':>10} {'loop ms':>9} {'ex/s':>7} {'outside':>7} {'data ms':>8} "
           f"{'GFLOP':>8} {'XLA GFLOP':>9} {'GFLOP/s':>8} {'XLA peak MB':>11} {'MFU':>6}"]
  for r in results["sizes"]:
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
    lines.append(
        f"{r['size']:<6} {r['parameters'] / 1e6:>7.1f}M {r['batch']:>5} {r['dtype']:>8} "
        f"{r['compile_s']:>9.1f} {r['compute_step_ms']:>10.1f} {r['loop_step_ms']:>9.1f} "
        f"{r['examples_per_s']:>7.1f} {100 * r['outside_compute_share']:>6.1f}% "
        f"{r['data_batch_ms']:>8.1f} {r['model_gflop_per_step']:>8.1f} "
        f"{r.get('xla_gflop_per_step', float('nan')):>9.1f} {r['achieved_gflops']:>8.1f} "
        f"{r['memory'].get('peak_mb', float('nan')):>11.0f} {mfu:>6}")
  lines.append("GFLOP: analytic model FLOPs per step (3 x forward matmuls, top_k experts, no "
               "remat or optimizer; benchmark/flops.py), which GFLOP/s and MFU use; XLA GFLOP: "
               "XLA's count for the compiled step, for reference")
  if "mfu_note" in results:
    lines.append(results["mfu_note"])
  return "\n".join(lines)
