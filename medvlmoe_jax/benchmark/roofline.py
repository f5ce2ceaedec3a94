"""The MoE layer against the roofline, at sample granularity.

With one routed vector per example, a batch of 32 reaches every expert, so the layer cannot be
faster than reading all the experts' weights once. This benchmark counts the bytes the layer
must move and the FLOPs it must compute at least, measures the machine's memory bandwidth (the
best of a large array copy and a large read) and matmul FLOP/s (a large float32 matmul) in the
same run, interleaved with the layer so that load from other processes hits all alike (best
of the rounds each), and reports the layer's time as a
share of the memory roofline, share = (bytes / bandwidth) / time, and of the full roofline,
max(bytes / bandwidth, FLOPs / peak) / time: 1.0 is as fast as the machine allows.

Byte model (P: bytes per stored parameter, float32; A: bytes per activation; T tokens of width
w, hidden h, K experts of which E receive at least one token):
  weights W = E (2 w h + h + w) P  (w1, b1, w2, b2 of every expert hit), router R = w K P;
  forward  = W + R + 2 T w A                  (weights and router read, tokens in and out);
  train    = 3 W + 3 R + 4 T w A              (forward and backward each read the weights,
             the gradients are written once; x, y, dy, dx).
Hidden activations (E x capacity x h) fit in cache and are not counted. FLOPs: forward
2 T w K (router) + 4 w h per (token, expert) assignment; train 3 x forward. The dense FFN
with the same active FLOPs (one MLP of width top_k h) is measured alike, for comparison.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medvlmoe_jax import platform
from medvlmoe_jax.benchmark.moe import _call, _fns, _shapes
from medvlmoe_jax.benchmark.timing import time_interleaved
from medvlmoe_jax.moe import dispatch, routing
from medvlmoe_jax.moe.layer import DenseFFN, SparseMoE


def moe_bytes(tokens: int, width: int, hidden: int, num_experts: int, experts_hit: int,
              param_bytes: int = 4, act_bytes: int = 4) -> dict[str, int]:
  """{forward, train}: bytes the MoE layer must move at least (module docstring)."""
  weights = experts_hit * (2 * width * hidden + hidden + width) * param_bytes
  router = width * num_experts * param_bytes
  acts = tokens * width * act_bytes
  return {"forward": weights + router + 2 * acts, "train": 3 * weights + 3 * router + 4 * acts}


def moe_flops(tokens: int, width: int, hidden: int, num_experts: int,
              rows: int) -> dict[str, int]:
  """{forward, train}: FLOPs of the router and of `rows` expert rows (the assignments, or
  the slot rows a dispatch computes)."""
  forward = 2 * tokens * width * num_experts + 4 * width * hidden * rows
  return {"forward": forward, "train": 3 * forward}


def dense_bytes(tokens: int, width: int, hidden: int, param_bytes: int = 4,
                act_bytes: int = 4) -> dict[str, int]:
  """{forward, train} of one MLP width -> hidden -> width, on the same model."""
  weights = (2 * width * hidden + hidden + width) * param_bytes
  acts = tokens * width * act_bytes
  return {"forward": weights + 2 * acts, "train": 3 * weights + 4 * acts}


def routing_summary(layer: SparseMoE, x: jax.Array) -> dict:
  """Which dispatch runs on this backend, how many experts the tokens reach and, for the
  dropless slot buffers, the capacity picked: the rows computed against the rows needed."""
  probs = routing.router_probabilities(x, layer.router[...])
  expert_index, _ = routing.top_k_routing(probs, layer.top_k)
  valid = jnp.ones(x.shape[0], bool)
  _, count = dispatch.expert_positions(expert_index, valid, layer.num_experts)
  count = np.asarray(count)
  impl = platform.moe_dispatch(expert_index.size, layer.num_experts, dropless=True)
  out = {"impl": impl, "experts_hit": int(np.sum(count > 0)), "rows_per_expert": count.tolist(),
         "rows_needed": int(count.sum())}
  if impl == "slots":
    capacities = dispatch.dropless_capacities(x.shape[0], layer.top_k, layer.num_experts)
    capacity = next(c for c in capacities if c >= count.max())
    out.update(capacities=capacities, capacity=capacity,
               rows_computed=capacity * layer.num_experts)
  return out


def _machine(copy_mb: int, matmul_n: int) -> tuple[dict, dict, int]:
  """(fns, bytes each moves, FLOPs per matmul): copies of a `copy_mb` MB float32 array, each
  reading and writing it once, by NumPy (one thread) and by a jitted add into the donated
  buffer (XLA's threads; no fresh pages touched); a jitted sum that only reads it (what the
  weights of a forward pass need); and an n x n float32 matmul."""
  n = copy_mb * 2**20 // 4
  src = np.random.default_rng(1).random(n, dtype=np.float32)
  dst = np.empty_like(src)
  add = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  held = {"a": jnp.asarray(src)}

  def numpy_copy():
    np.copyto(dst, src)

  def jax_copy():
    held["a"] = add(held["a"])
    return held["a"]
  b = jnp.asarray(src)
  total = jax.jit(jnp.sum)
  a = jnp.asarray(np.random.default_rng(2).normal(size=(matmul_n, matmul_n)), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  fns = {"copy/numpy": numpy_copy, "copy/jax": jax_copy, "read/jax": lambda: total(b),
         "matmul/xla": lambda: matmul(a, a)}
  return fns, {"copy/numpy": 2 * src.nbytes, "copy/jax": 2 * src.nbytes,
               "read/jax": src.nbytes}, 2 * matmul_n**3


def run(batch: int = 32, dim: int = 512, hidden: int = 2048, num_experts: int = 8,
        top_k: int = 2, dtype: str = "float32", copy_mb: int = 256, matmul_n: int = 2048,
        rounds: int = 9) -> dict:
  compute = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  tokens, width = _shapes("sample", batch, dim, 0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(tokens, width)), compute)  # as `moe`
  valid = jnp.ones((tokens,), bool)
  moe = SparseMoE(width, hidden, num_experts=num_experts, top_k=top_k, dtype=compute,
                  rngs=nnx.Rngs(0))
  dense = DenseFFN(width, top_k * hidden, dtype=compute, rngs=nnx.Rngs(0))
  route = routing_summary(moe, x)
  act = jnp.dtype(compute).itemsize
  moved = {"moe": moe_bytes(tokens, width, hidden, num_experts, route["experts_hit"],
                            act_bytes=act),
           "dense": dense_bytes(tokens, width, top_k * hidden, act_bytes=act)}
  flops = {"moe": moe_flops(tokens, width, hidden, num_experts, route["rows_needed"]),
           "dense": {"forward": 4 * tokens * width * top_k * hidden,
                     "train": 12 * tokens * width * top_k * hidden}}
  fns, stream_bytes, matmul_flops = _machine(copy_mb, matmul_n)
  for name, layer in (("moe", moe), ("dense", dense)):
    forward, train, args = _fns(layer, x, valid, None)
    fns[f"{name}/forward"], fns[f"{name}/train"] = (_call(forward, args, None),
                                                    _call(train, args, None))
  experts = moe.experts()
  read = jax.jit(lambda p: sum(jnp.sum(a) for a in p))   # the experts' weights, read once
  fns["read/moe_weights"] = lambda: read(experts)
  load = os.getloadavg()[0]
  times = time_interleaved(fns, rounds=rounds)
  bandwidth = {k: nbytes / times[k]["min_s"] for k, nbytes in stream_bytes.items()}
  best_bw = max(bandwidth.values())
  peak = matmul_flops / times["matmul/xla"]["min_s"]
  weights = sum(a.nbytes for a in jax.tree.leaves(experts))
  cases = []
  for name, mode, nbytes, nflops in [
      ("moe", "forward", moved["moe"]["forward"], flops["moe"]["forward"]),
      ("moe", "train", moved["moe"]["train"], flops["moe"]["train"]),
      ("dense", "forward", moved["dense"]["forward"], flops["dense"]["forward"]),
      ("dense", "train", moved["dense"]["train"], flops["dense"]["train"]),
      ("read", "moe_weights", weights, 0)]:
    t = times[f"{name}/{mode}"]
    memory_s, compute_s = nbytes / best_bw, nflops / peak
    cases.append({"layer": name, "mode": mode, "bytes": nbytes, "flops": nflops,
                  "memory_ms": 1e3 * memory_s, "compute_ms": 1e3 * compute_s,
                  "best_ms": 1e3 * t["min_s"], "median_ms": 1e3 * t["median_s"],
                  "share": memory_s / t["min_s"], "median_share": memory_s / t["median_s"],
                  "roofline_share": max(memory_s, compute_s) / t["min_s"]})
  if "rows_computed" in route:
    computed = moe_flops(tokens, width, hidden, num_experts, route["rows_computed"])
    cases[0]["flops_computed"], cases[1]["flops_computed"] = computed["forward"], computed["train"]
  return {"config": dict(batch=batch, dim=dim, tokens=tokens, width=width, hidden=hidden,
                         num_experts=num_experts, top_k=top_k, dtype=dtype, copy_mb=copy_mb,
                         matmul_n=matmul_n, rounds=rounds, backend=platform.current().platform,
                         cpus=os.cpu_count(), load_before=load, load_after=os.getloadavg()[0]),
          "routing": route, "bandwidth_gb_s": {k: v / 1e9 for k, v in bandwidth.items()},
          "matmul_gflop_s": peak / 1e9, "ridge_flop_per_byte": peak / best_bw, "cases": cases}


def table(results: dict) -> str:
  c, r = results["config"], results["routing"]
  bw = results["bandwidth_gb_s"]
  fwd = results["cases"][0]
  rows = (f", capacity {r['capacity']} of {r['capacities']} -> {r['rows_computed']} slot rows "
          f"computed" if "capacity" in r else "")
  lines = [f"MoE layer vs the roofline: sample granularity, {c['tokens']} vectors x "
           f"{c['width']}, hidden {c['hidden']}, {c['num_experts']} experts top-{c['top_k']}, "
           f"{c['dtype']}, {c['backend']} ({c['cpus']} CPUs, load {c['load_before']:.1f} -> "
           f"{c['load_after']:.1f}); best of {c['rounds']} interleaved rounds",
           f"memory bandwidth {max(bw.values()):.1f} GB/s (best over a {c['copy_mb']} MB array: "
           + ", ".join(f"{k} {v:.1f}" for k, v in bw.items()) + "; a copy counts read + write "
           "bytes); matmul "
           f"{results['matmul_gflop_s']:.1f} GFLOP/s (float32, n = {c['matmul_n']}); ridge "
           f"{results['ridge_flop_per_byte']:.1f} FLOP/byte, MoE forward "
           f"{fwd['flops'] / fwd['bytes']:.1f}",
           f"dispatch '{r['impl']}': {r['experts_hit']}/{c['num_experts']} experts hit, "
           f"{r['rows_needed']} assignments{rows}",
           f"{'layer':<6} {'mode':<12} {'MB':>6} {'GFLOP':>6} {'mem ms':>7} {'flop ms':>7} "
           f"{'best ms':>8} {'median':>8} {'share':>6} {'median':>6} {'roof':>5}"]
  for k in results["cases"]:
    lines.append(f"{k['layer']:<6} {k['mode']:<12} {k['bytes'] / 1e6:>6.1f} "
                 f"{k['flops'] / 1e9:>6.2f} {k['memory_ms']:>7.2f} {k['compute_ms']:>7.2f} "
                 f"{k['best_ms']:>8.2f} {k['median_ms']:>8.2f} {k['share']:>6.0%} "
                 f"{k['median_share']:>6.0%} {k['roofline_share']:>5.0%}")
  lines.append("share: (MB / bandwidth) / best time; median: the same over the median time; "
               "roof: max(mem, flop) / best time")
  return "\n".join(lines)
