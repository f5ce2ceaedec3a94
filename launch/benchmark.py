"""Benchmarks, printed as a table and written as JSON ratios.

  python launch/benchmark.py {moe,data} [--json OUT] [--simulate_devices 8]

`moe`: the MoE layer (sample and token granularity; dropless and capacity 1.25) against a
dense FFN with the same active FLOPs, forward and forward+backward, on one device and on an
expert-parallel mesh of all devices. Every comparison is taken in one process with
interleaved repeats; report the ratios, not the absolute times.
`data`: records per second of data preparation and of the training input pipeline (0 and 2
Grain workers) from 512x512 PNG X-rays. --simulate_devices splits
the CPU into N XLA devices (they share the same cores: the sharded figures then measure
dispatch overhead, not speed-up).
"""

import json
import os
import sys

from absl import app, flags

_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_SIMULATE = flags.DEFINE_integer("simulate_devices", 0, "Simulated CPU devices (0: real devices).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved timing rounds.")
_BATCH = flags.DEFINE_integer("batch", 32, "Examples per batch.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_SHARED = flags.DEFINE_string("shared_data", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "data"), "The shared real-data folder.")
BENCHMARKS = ("moe", "data")


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(f"usage: benchmark.py {{{','.join(BENCHMARKS)}}} [--json OUT]")
  if _SIMULATE.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_SIMULATE.value}")
  from medvlmoe_jax.benchmark import data, moe   # imports JAX: after XLA_FLAGS is set
  results = {}
  if argv[1] == "moe":
    results["moe"] = moe.run(batch=_BATCH.value, dtype=_DTYPE.value, rounds=_ROUNDS.value)
    print(moe.table(results["moe"]))
  if argv[1] == "data":
    results["data"] = data.run(os.path.abspath(_SHARED.value), batch_size=_BATCH.value)
    print(data.table(results["data"]))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {_JSON.value}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
