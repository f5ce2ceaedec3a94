"""Compile the train and eval steps for NVIDIA GPUs that are not there (a CPU host).

`jax.experimental.topologies` gives compile-only GPU devices from a target description
(`gpu_targets/*.txtpb`, written from the devices' public specifications); a mesh over them
traces every platform choice for the GPU (`medvlmoe_jax.platform`) and XLA:GPU compiles the
step: its buffer assignment (`memory_analysis`), the cuDNN fused-attention calls, the
collectives. Needs the `gpu-compile` extra (jax-cuda12-plugin, jax-cuda12-pjrt: no CUDA
libraries, no driver) and `JAX_PLATFORMS=cpu` set before JAX starts (else the CUDA plugin
tries to start a GPU and its topology API is lost).

Used by `python launch/benchmark.py compile` and tests/test_deviceless.py.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from medvlmoe_jax import config as config_lib
from medvlmoe_jax import platform, sharding
from medvlmoe_jax.models.medvlmoe import abstract_model
from medvlmoe_jax.train import optimizer as optim_lib
from medvlmoe_jax.train.loss_scale import DynamicLossScale
from medvlmoe_jax.train.step import TrainState, jit_eval_step, jit_train_step

GB = 1e9
TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
TARGETS = tuple(sorted(n.removesuffix(".txtpb") for n in os.listdir(TARGET_DIR)
                       if n.endswith(".txtpb")))
# The paper's machine, the common one and the one these machines lend: (target, devices).
DEFAULT_CASES = (("a100_80gb", 8), ("h100_sxm", 8), ("h200", 1))
# JAX reserves this share of a GPU's memory at start (XLA_PYTHON_CLIENT_MEM_FRACTION).
PREALLOCATED = 0.75
# XLA's Triton GEMM autotuning needs a GPU; cuBLAS GEMMs compile without one. Passed per
# compile (XLA_FLAGS would be read only when the process's first backend starts).
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
SITES = ("vision_self", "text_causal", "fusion_vision_from_text", "fusion_text_from_vision")


def target_config(name: str) -> str:
  if name not in TARGETS:
    raise ValueError(f"unknown GPU target {name!r} (known: {', '.join(TARGETS)})")
  with open(os.path.join(TARGET_DIR, f"{name}.txtpb")) as f:
    return f.read()


def _field(text: str, name: str) -> str:
  return re.search(rf"\b{name}:\s*\"?([^\"\n]+)\"?", text).group(1)


def device_memory_gb(name: str) -> float:
  return int(_field(target_config(name), "device_memory_size")) / GB


def cudnn_version(name: str) -> int:
  """The target's cuDNN as JAX encodes it (9.8.0 -> 90800)."""
  block = re.search(r"dnn_version_info\s*\{([^}]*)\}", target_config(name)).group(1)
  get = lambda k: int(re.search(rf"{k}:\s*(\d+)", block).group(1))
  return get("major") * 10000 + get("minor") * 100 + get("patch")


def gpu_devices(name: str, count: int):
  """`count` compile-only devices of target `name`."""
  from jax.experimental import topologies
  if jax.config.jax_platforms != "cpu":
    raise RuntimeError("a deviceless GPU compile needs JAX_PLATFORMS=cpu set before JAX starts")
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(name),
                                            topology=f"1x1x{count}")
  except (NotImplementedError, RuntimeError) as e:
    raise RuntimeError(f"no CUDA compile target ({e}); install the gpu-compile extra: "
                       "pip install -e '.[gpu-compile]'") from e
  return topology.devices


@contextlib.contextmanager
def target_cudnn(name: str):
  """JAX asks the host's cuDNN library for its version while tracing cuDNN attention; in a
  deviceless compile the version is the target's (there is no library to ask)."""
  from jax._src.cudnn import fused_attention_stablehlo as fused
  original, version = fused.check_cudnn_version, cudnn_version(name)
  fused.check_cudnn_version = lambda: version
  try:
    yield
  finally:
    fused.check_cudnn_version = original


def abstract_batch(config, batch: int, mesh, eval_step: bool) -> dict:
  """The step's batch as shapes: what `data.pipeline` gives for `config` (uint8 images,
  right-padded token ids, labels and their mask; eval batches carry `valid`)."""
  d, classes = config.data, config.model.num_classes
  shapes = {"image": ((batch, d.image_size, d.image_size, 3), jnp.uint8),
            "labels": ((batch, classes), jnp.float32), "label_mask": ((batch, classes), bool)}
  if config.model.text.enabled and not config.model.vision_only:
    shapes.update(input_ids=((batch, d.text_max_len), jnp.int32),
                  attention_mask=((batch, d.text_max_len), jnp.int32))
  if eval_step:
    shapes["valid"] = ((batch,), bool)
  where = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(s, t, sharding=where) for k, (s, t) in shapes.items()}


def abstract_steps(config, devices):
  """(train step, eval step, abstract state, mesh): nothing allocated."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh, config.model.moe.num_experts, devices)
  _, graphdef, params = abstract_model(config.model, config.seed)
  schedules = optim_lib.schedules(config.optim, 100, config.train.epochs,
                                  config.train.warmup_epochs)
  tx = optim_lib.make_optimizer(config.optim, params, schedules)
  ls = config.optim.loss_scale

  def init(params):
    scale = (DynamicLossScale.create(ls.initial, ls.growth_interval)
             if config.model.dtype == "float16" else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      loss_scale=scale)

  state = jax.eval_shape(init, params)
  shardings = sharding.tree_shardings(mesh, state)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       state, shardings)
  task = config.data.task
  train = jit_train_step(graphdef, tx, task, schedules, mesh, shardings,
                         config.train.align_weight)
  evaluate = jit_eval_step(graphdef, task, mesh, shardings.params)
  return train, evaluate, state, mesh


def memory_of(compiled) -> dict:
  """XLA's buffer assignment per device: peak = arguments + outputs + temporaries - aliases
  (the donated state is aliased to the new one, so it counts once)."""
  m = compiled.memory_analysis()
  out = {"arguments_gb": m.argument_size_in_bytes / GB, "outputs_gb": m.output_size_in_bytes / GB,
         "temporaries_gb": m.temp_size_in_bytes / GB, "aliases_gb": m.alias_size_in_bytes / GB}
  out["peak_gb"] = (out["arguments_gb"] + out["outputs_gb"] + out["temporaries_gb"]
                    - out["aliases_gb"])
  return out


def fused_attention_calls(hlo: str) -> dict:
  """cuDNN fused-attention calls (forward and backward kernels) per attention site, read
  from the op names (`jax.named_scope(site)` in `models.layers.attend`)."""
  counts = dict.fromkeys(SITES, 0)
  for line in hlo.splitlines():
    if 'custom_call_target="__cudnn$fmha' not in line:
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    site = next((s for s in SITES if name and s in name.group(1)), "unknown")
    counts[site] = counts.get(site, 0) + 1
  return counts


def all_to_all_count(hlo: str) -> int:
  return len(re.findall(r"\sall-to-all(?:-start)?\(", hlo))


def expert_gemm_rows(hlo: str, hidden: int, width: int) -> list[int]:
  """The row counts of the experts' GEMMs (cuBLAS calls inside the MoE's shard_map with the
  expert hidden width on one side), one per compiled capacity branch and direction."""
  rows = set()
  for line in hlo.splitlines():
    if "__cublas" not in line or "shard_map" not in line:
      continue
    dims = re.search(r"= \(\w+\[(\d+),(\d+)\]", line)
    if dims:
      a, b = int(dims.group(1)), int(dims.group(2))
      if hidden in (a, b) and {a, b} != {hidden, width}:
        rows.add(b if a == hidden else a)
  return sorted(rows)


def compile_steps(config, target: str, devices: int, steps=("train", "eval"),
                  batch: int | None = None) -> list[dict]:
  """Compile `steps` ('train', 'eval') of `config` for `devices` x `target`, from one
  abstract model and state: a row of `benchmark.py compile` per step."""
  config = copy.deepcopy(config)
  rows, built = [], None
  for step in steps:
    step_batch = batch or (config.data.batch_size if step == "train" else
                           config.data.eval_batch_size)
    row = {"target": target, "devices": devices, "step": step, "dtype": config.model.dtype,
           "batch": step_batch, "compiled": False, "error": None, "peak_gb_per_device": None,
           "device_memory_gb": device_memory_gb(target), "fits": None,
           "fused_attention_calls": None, "all_to_all": None, "moe_dispatch": None}
    t0 = time.perf_counter()
    try:
      built = built or abstract_steps(config, gpu_devices(target, devices))
      train, evaluate, state, mesh = built
      sharding.check_batch(step_batch, mesh, "batch")
      abstract = abstract_batch(config, step_batch, mesh, step == "eval")
      choices = platform.resolve(config.model, mesh, step_batch, config.data.text_max_len)
      fn, args = ((train, (state, abstract)) if step == "train" else
                  (evaluate, (state.params, abstract)))
      with target_cudnn(target), jax.set_mesh(mesh):
        compiled = fn.__wrapped__.trace(*args).lower().compile(COMPILER_OPTIONS)
      hlo = compiled.as_text()
      moe = config.model.moe
      width = config.model.fusion.dim * (2 if moe.granularity == "sample" else 1)
      memory = memory_of(compiled)
      row.update(compiled=True, peak_gb_per_device=memory["peak_gb"],
                 arguments_gb=memory["arguments_gb"], temporaries_gb=memory["temporaries_gb"],
                 fused_attention_calls=fused_attention_calls(hlo),
                 attention_sites=sorted(platform.attention_sites(config.model)),
                 all_to_all=all_to_all_count(hlo), moe_dispatch=choices["moe_dispatch"],
                 expert_gemm_rows=expert_gemm_rows(hlo, moe.hidden, width),
                 attention=choices["attention"])
      row["fits"] = row["peak_gb_per_device"] <= PREALLOCATED * row["device_memory_gb"]
    except Exception as e:   # a case that does not compile is a result, not a crash
      row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
    row["compile_s"] = time.perf_counter() - t0
    rows.append(row)
  return rows


def load_config(spec: str):
  """A `FILE[:ARG]` config file's config, as train.py's --config takes it."""
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def paper_configs(root: str) -> dict:
  """Every config file of `root/configs` that follows the paper's recipe (ViT-L/14 +
  BioGPT on a prepared dataset), by file name."""
  out = {}
  folder = os.path.join(root, "configs")
  for name in sorted(n for n in os.listdir(folder) if n.endswith(".py") and n[0] != "_"):
    c = load_config(os.path.join(folder, name))
    if (c.data.name == "tfds" and not c.data.mixture and c.model.vision.width == 1024
        and c.model.text.width == 1024):
      out[f"configs/{name}"] = c
  return out


def run(configs: dict, cases=DEFAULT_CASES, steps=("train", "eval"),
        batch: int | None = None, progress=print) -> dict:
  rows = []
  for name, config in configs.items():
    for target, devices in cases:
      for row in compile_steps(config, target, devices, steps, batch):
        rows.append(dict(config=name, **row))
        progress(line(rows[-1]))
  return {"cases": rows, **provenance()}


def provenance() -> dict:
  """The commit, JAX and the host CPU a table was made with."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  cpu = None
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
  return {"commit": commit, "jax": jax.__version__, "host_cpu": cpu, "host_cores": os.cpu_count()}


def line(row: dict) -> str:
  where = f"{row['config']} {row['step']} {row['dtype']} batch {row['batch']} on " \
          f"{row['devices']}x {row['target']}"
  if not row["compiled"]:
    return f"{where}: did not compile: {row['error']}"
  calls = ", ".join(f"{s} {n}" for s, n in row["fused_attention_calls"].items()
                    if n or s in row["attention_sites"])
  return (f"{where}: peak {row['peak_gb_per_device']:.1f} GB per device of "
          f"{row['device_memory_gb']:.0f} ({'fits' if row['fits'] else 'does NOT fit'} in "
          f"{PREALLOCATED:.0%}); fused attention {calls}; all-to-all {row['all_to_all']}; "
          f"MoE {row['moe_dispatch']}; compile {row['compile_s']:.0f} s")


def table(results: dict) -> str:
  head = ("| config | step | target | peak GB / device | fits | fused attention calls "
          "(vision, text, fusion v<-t, t<-v) | all-to-all | MoE dispatch | compile s |")
  out = [head, "|" + "---|" * 9]
  for r in results["cases"]:
    where = f"| {r['config']} | {r['step']} {r['dtype']} b{r['batch']} | {r['devices']}x {r['target']} |"
    if not r["compiled"]:
      out.append(f"{where} did not compile: {r['error']} | | | | | |")
      continue
    calls = ", ".join(str(r["fused_attention_calls"].get(s, 0)) for s in SITES)
    out.append(f"{where} {r['peak_gb_per_device']:.1f} / {r['device_memory_gb']:.0f} | "
               f"{'yes' if r['fits'] else 'no'} | {calls} | {r['all_to_all']} | "
               f"{r['moe_dispatch']} | {r['compile_s']:.0f} |")
  return "\n".join(out)
