"""Benchmarks, printed as tables and written as JSON.

  python launch/benchmark.py {encoders,train,moe,roofline,data,all} [--json OUT]
      [--simulate_devices 8]

`encoders`: our ViT-L/14 and BioGPT float32 forward (batch 1 and 8) against HF PyTorch with
the same weights, and their FLOP/s as a fraction of a large float32 matmul's.
`train`: compile time, step time, examples/s, memory and the share of the training loop
outside compiled compute, for the tiny, small and full model sizes.
`moe`: the MoE layer against a dense FFN with the same active FLOPs.
`roofline`: the sample-granularity MoE layer's time as a share of its roofline: the bytes it
must move at the memory bandwidth (a large copy / read) and its FLOPs at a large matmul's FLOP/s,
both measured in the same run.
`data`: records per second of data preparation and of the training input pipeline.
`compile`: a deviceless compile of the paper-recipe configs' train and eval steps for NVIDIA
GPUs (default 8x A100 80 GB, 8x H100 SXM, 1x H200; `--config`, `--target`, `--devices`,
`--batch` narrow it): whether each compiles, its peak memory per device, the fused-attention
calls per site, the all-to-all count and the MoE dispatch. Needs the gpu-compile extra.
Every comparison is taken in one process with interleaved repeats and medians; the README's
Benchmarks section says what each figure means.
"""

import json
import os
import sys

from absl import app, flags

from medvlmoe_jax import cli   # absl only: jax is imported after --simulate_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_SIMULATE = flags.DEFINE_integer("simulate_devices", 0, "Simulated CPU devices (0: real devices).")
_ROUNDS = flags.DEFINE_integer("rounds", None, "Interleaved timing rounds (default per benchmark).")
_BATCH = flags.DEFINE_integer("batch", None, "moe/data: examples per batch (default 32); "
                              "compile: the batch of both steps (default: the config's).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "moe/train compute dtype (default float32 on CPU, bfloat16 on GPU); "
                           "compile: the model's (default: the config's; float16 for it only).")
_SIZES = flags.DEFINE_list("sizes", "tiny,small,full", "train: model sizes to run.")
_WORKERS = flags.DEFINE_list("workers", "0,2", "data: Grain worker counts of the pipeline.")
_FULL_BATCH = flags.DEFINE_integer("full_batch", None, "train: batch of the full size "
                                   "(default 2 on CPU, 32 on GPU).")
_SHARED = flags.DEFINE_string("shared_data", os.path.join(ROOT, "..", "shared", "data"),
                              "The shared real-data folder (data benchmark).")
_CONFIGS = flags.DEFINE_multi_string("config", None, "compile: config files (default: every "
                                     "paper-recipe config in configs/).")
_TARGET = flags.DEFINE_multi_enum("target", None, ["a100_80gb", "h100_sxm", "h200"],
                                  "compile: GPU targets (default: 8x a100_80gb, 8x h100_sxm, "
                                  "1x h200).")
_DEVICES = flags.DEFINE_integer("devices", None, "compile: GPUs per target (default 8, 1 for h200).")
BENCHMARKS = ("encoders", "train", "moe", "roofline", "data", "compile")


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS + ("all",):
    raise app.UsageError(f"usage: benchmark.py {{{','.join(BENCHMARKS)},all}} [--json OUT]")
  if _SIMULATE.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_SIMULATE.value}")
  if argv[1] == "compile":   # compile-only GPUs: the CUDA plugin must not start a backend
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax   # after XLA_FLAGS is set
  from medvlmoe_jax import platform
  from medvlmoe_jax.benchmark import data, encoders, moe, roofline, train
  dtype = _DTYPE.value or ("float32" if platform.current().platform == "cpu" else "bfloat16")
  if dtype == "float16" and argv[1] != "compile":
    raise app.UsageError("--dtype float16 is for compile only")
  batch = _BATCH.value or 32
  rounds = lambda default: _ROUNDS.value or default
  chosen = tuple(b for b in BENCHMARKS if b != "compile") if argv[1] == "all" else (argv[1],)
  results = {}
  for name in chosen:
    if name == "encoders":
      results[name] = encoders.run(rounds=rounds(5))
      print(encoders.table(results[name]))
    elif name == "train":
      sys.path.insert(0, ROOT)
      from configs import demo
      results[name] = train.run(demo.get_config(), sizes=tuple(_SIZES.value), rounds=rounds(3),
                                dtype=dtype, full_batch=_FULL_BATCH.value)
      print(train.table(results[name]))
    elif name == "moe":
      results[name] = moe.run(batch=batch, dtype=dtype, rounds=rounds(7))
      print(moe.table(results[name]))
    elif name == "roofline":
      results[name] = roofline.run(batch=batch, dtype=dtype, rounds=rounds(9))
      print(roofline.table(results[name]))
    elif name == "data":
      results[name] = data.run(os.path.abspath(_SHARED.value), batch_size=batch,
                               workers=tuple(int(w) for w in _WORKERS.value))
      print(data.table(results[name]))
    else:
      from medvlmoe_jax.benchmark import deviceless
      configs = ({spec: deviceless.load_config(spec) for spec in _CONFIGS.value}
                 if _CONFIGS.value else deviceless.paper_configs(ROOT))
      for c in configs.values():
        c.model.dtype = _DTYPE.value or c.model.dtype
      cases = deviceless.DEFAULT_CASES
      if _TARGET.value:
        cases = tuple((t, _DEVICES.value or dict(cases).get(t, 8)) for t in _TARGET.value)
      elif _DEVICES.value:
        cases = tuple((t, _DEVICES.value) for t, _ in cases)
      results[name] = deviceless.run(configs, cases, batch=_BATCH.value)
      print(deviceless.table(results[name]))
    print(flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {_JSON.value}", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
