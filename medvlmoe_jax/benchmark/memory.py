"""XLA's peak buffer for the full train step, from a compile alone (no parameter is allocated).

The state is abstract (`jax.eval_shape`), so the 687M-parameter model's step can be lowered
and compiled on a CPU for its memory analysis without running it:

  python -m medvlmoe_jax.benchmark.memory --batch 32 --dtype bfloat16 --remat none,full

peak = arguments + outputs + temporaries - aliases (the donated state is aliased to the new
state, so it counts once): the bytes XLA's buffer assignment must hold at the step's fullest
point. A CPU compile traces the CPU's code paths (`--attention xla` traces the accelerators'
attention instead) and XLA:CPU keeps bfloat16 intermediates in float32, so the figure is an
estimate of what a GPU needs, not a GPU's own.

XLA:CPU expands the optimization barriers that keep `jax.checkpoint`'s recomputation apart
and then runs CSE again, which merges the recomputation back into the forward pass: a plain
CPU compile reports the same peak for every `model.remat`. `main` therefore compiles with
the barrier expansion disabled (`REMAT_XLA_FLAGS`), as an accelerator's compiler keeps them.

`--time_attention` times the attention implementations instead, at full size on this backend
(the measurement behind `platform.attention`'s CPU choice).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from medvlmoe_jax import platform
from medvlmoe_jax.benchmark import deviceless

# Keeps remat's optimization barriers through XLA:CPU's CSE (see the module docstring).
REMAT_XLA_FLAGS = "--xla_disable_hlo_passes=cse_barrier_expander"


def full_config(batch: int, dtype: str, remat: str | None = None):
  """The train benchmark's 'full' size (ViT-L/14 + BioGPT + full head) from configs/demo.py."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if root not in sys.path:
    sys.path.insert(0, root)
  from configs import demo
  from medvlmoe_jax.benchmark.train import size_config
  c = size_config(demo.get_config(), "full", dtype, batch)
  c.data.synthetic.update(num_train=batch, num_val=1, num_test=1)
  if remat is not None:
    c.model.remat = remat
  return c


def abstract_step(config):
  """(jitted train step, abstract state, abstract batch, mesh) for `config` on this host's
  devices, nothing allocated."""
  step, _, state, mesh = deviceless.abstract_steps(config, None)
  return step, state, deviceless.abstract_batch(config, config.data.batch_size, mesh, False), mesh


def measure(config, attention: str | None = None) -> dict:
  """Lower and compile the train step for the default backend: its memory analysis and the
  lower / compile times (on a CPU, `model.remat` shows only under `REMAT_XLA_FLAGS`).
  `attention` forces an attention implementation (`platform.force_attention`), e.g.
  'xla' for the accelerators' path on a CPU."""
  step, state, batch, mesh = abstract_step(config)
  forced = platform.force_attention(attention) if attention else contextlib.nullcontext()
  with forced, jax.set_mesh(mesh):
    t0 = time.perf_counter()
    lowered = step.__wrapped__.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return dict(deviceless.memory_of(compiled), lower_s=t1 - t0, compile_s=t2 - t1,
              gflop=float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan"),
              batch=config.data.batch_size, dtype=config.model.dtype,
              remat=config.model.get("remat"), attention=attention or "default",
              backend=platform.current().platform)


def time_attention(batch: int = 2, dtype: str = "float32", rounds: int = 7) -> list[dict]:
  """Full-size attention (ViT-L/14 self-attention, BioGPT causal + padding, the fusion's
  cross-attention both ways) forward and forward + backward, per implementation that runs
  on this backend, interleaved (`timing.time_interleaved`)."""
  from medvlmoe_jax.benchmark.timing import time_interleaved
  from medvlmoe_jax.models import layers
  rng = np.random.default_rng(0)
  dt = jnp.dtype(dtype)
  text_mask = np.ones((batch, 64), bool)
  text_mask[:, 40:] = False
  causal = np.tril(np.ones((64, 64), bool))[None, None] & text_mask[:, None, None, :]
  cases = {"vit_self": (257, 257, 16, None), "biogpt_causal": (64, 64, 16, causal),
           "fusion_v_from_t": (257, 64, 8, text_mask[:, None, None, :]),
           "fusion_t_from_v": (64, 257, 8, None)}
  impls = ["blocked", "xla"] + (["cudnn"] if platform.current().platform == "gpu" else [])
  out = []
  for name, (lq, lk, heads, mask) in cases.items():
    q = jnp.asarray(rng.normal(size=(batch, lq, heads, 64)) / 8, dt)
    k, v = (jnp.asarray(rng.normal(size=(batch, lk, heads, 64)), dt) for _ in range(2))
    mask = None if mask is None else jnp.asarray(mask)
    fns = {}
    for impl in impls:   # new functions per implementation: jit caches traces by function
      fwd = lambda q, k, v: layers.attend(q, k, v, mask)
      train = jax.grad(lambda q, k, v, f=fwd: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2),
                       argnums=(0, 1, 2))
      with platform.force_attention(impl):
        for mode, f in (("forward", fwd), ("train", train)):
          compiled = jax.jit(f).lower(q, k, v).compile()
          fns[f"{impl}/{mode}"] = lambda c=compiled: c(q, k, v)
    times = time_interleaved(fns, rounds=rounds)
    for mode in ("forward", "train"):
      row = {"case": name, "mode": mode, "batch": batch, "dtype": dtype}
      row.update({f"{impl}_ms": 1e3 * times[f"{impl}/{mode}"]["median_s"] for impl in impls})
      out.append(row)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--remat", default=None,
                 help="comma-separated model.remat values to compare (default: the config's)")
  p.add_argument("--attention", default=None,
                 help="force an attention implementation: blocked | xla | cudnn")
  p.add_argument("--json", default=None, help="append the results here, one JSON per line")
  p.add_argument("--time_attention", action="store_true",
                 help="time the attention implementations at full size instead")
  args = p.parse_args(argv)
  # Read when the backend starts, which nothing above has done.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {REMAT_XLA_FLAGS}".strip()
  if args.time_attention:
    for r in time_attention(args.batch, args.dtype):
      print(json.dumps(r), flush=True)
    return
  for remat in (args.remat.split(",") if args.remat else [None]):
    r = measure(full_config(args.batch, args.dtype, remat), args.attention)
    print(f"{r['dtype']} batch {r['batch']} remat={r['remat']} attention={r['attention']} "
          f"on {r['backend']}: peak {r['peak_gb']:.2f} GB = arguments {r['arguments_gb']:.2f} "
          f"+ outputs {r['outputs_gb']:.2f} + temporaries {r['temporaries_gb']:.2f} "
          f"- aliases {r['aliases_gb']:.2f}; {r['gflop']:.0f} GFLOP; lower {r['lower_s']:.1f} s, "
          f"compile {r['compile_s']:.1f} s", flush=True)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
