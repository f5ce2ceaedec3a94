"""Train-step speed and memory for three model sizes, on synthetic data through the real
input pipeline and the real jitted step.

For each size: compile time (lower + compile of the train step), the compiled step alone on
a batch already on the device ("compute"), and the training loop as `trainer.py` runs it
(next batch from the Grain iterator, `put_batch`, step, metrics kept on the device) over the
same number of steps. The share of the loop spent outside compiled compute is
1 - compute / loop (JAX dispatches asynchronously, so the next batch is read while the step
runs; a share near zero, or slightly negative from noise, means the host keeps up). Model
FLOPs per step are those XLA counts for the compiled train step (forward, backward and
optimizer; on accelerators also the forward work that `model.remat` recomputes, so the
"MFU" counts recomputation too); on a GPU they give the MFU against the device's dense bf16
peak. XLA peak MB is the compile's buffer assignment (`medvlmoe_jax.benchmark.memory`
measures the full step at batch 32 without running it).
"""

from __future__ import annotations

import resource
import time

import jax
import ml_collections
import numpy as np

from medvlmoe_jax import config as config_lib
from medvlmoe_jax import sharding
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.train.trainer import create_experiment

# Dense bf16 peak FLOP/s per device (vendor data sheets), for MFU.
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


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
    c.data.batch_size = 2 if jax.default_backend() == "cpu" else 32
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
  flops = _flops(compiled)
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
  if flops is not None:
    result["model_gflop_per_step"] = flops / 1e9
    result["achieved_gflops"] = flops / t["compute"] / 1e9
    device = jax.devices()[0]
    peak = next((v for k, v in GPU_BF16_PEAK.items() if k in device.device_kind), None)
    if device.platform == "gpu" and peak is not None:
      result["mfu"] = flops / t["compute"] / peak
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    result["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
  del exp, state, compiled
  return result


def run(demo: ml_collections.ConfigDict, sizes=("tiny", "small", "full"),
        steps: int | None = None, rounds: int = 3, dtype: str = "float32",
        full_batch: int | None = None) -> dict:
  """`demo`: configs/demo.py's config, which the three sizes start from."""
  results = {"config": dict(backend=jax.default_backend(), devices=jax.device_count(),
                            device_kind=jax.devices()[0].device_kind, rounds=rounds),
             "sizes": []}
  for size in sizes:
    n = steps or {"tiny": 16, "small": 4, "full": 2}[size]
    results["sizes"].append(run_size(demo, size, n, rounds, dtype,
                                      full_batch if size == "full" else None))
  if jax.default_backend() != "gpu":
    results["gpu"] = "no GPU on this machine: bf16 MFU not measured"
  return results


def table(results: dict) -> str:
  c = results["config"]
  lines = [f"Train step on {c['devices']} {c['backend']} device(s) ({c['device_kind']}); "
           "compute = compiled step on a device batch, loop = trainer loop (data + host + step)",
           f"{'size':<6} {'params':>8} {'batch':>5} {'dtype':>8} {'compile s':>9} "
           f"{'compute ms':>10} {'loop ms':>9} {'ex/s':>7} {'outside':>7} {'data ms':>8} "
           f"{'GFLOP/s':>8} {'XLA peak MB':>11} {'MFU':>5}"]
  for r in results["sizes"]:
    mfu = f"{100 * r['mfu']:.0f}%" if "mfu" in r else "-"
    lines.append(
        f"{r['size']:<6} {r['parameters'] / 1e6:>7.1f}M {r['batch']:>5} {r['dtype']:>8} "
        f"{r['compile_s']:>9.1f} {r['compute_step_ms']:>10.1f} {r['loop_step_ms']:>9.1f} "
        f"{r['examples_per_s']:>7.1f} {100 * r['outside_compute_share']:>6.1f}% "
        f"{r['data_batch_ms']:>8.1f} {r.get('achieved_gflops', float('nan')):>8.1f} "
        f"{r['memory'].get('peak_mb', float('nan')):>11.0f} {mfu:>5}")
  if "gpu" in results:
    lines.append(results["gpu"])
  return "\n".join(lines)
