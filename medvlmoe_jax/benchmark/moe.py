"""The MoE layer against a dense FFN with the same active FLOPs (top_k x hidden), forward
and forward+backward, for both granularities, dropless and with capacity, on one device and
on an expert-parallel mesh of all devices; and on one device every dropless dispatch
implementation, timed and with the FLOPs XLA counts for it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from medvlmoe_jax import platform
from medvlmoe_jax import sharding
from medvlmoe_jax.benchmark.timing import time_interleaved
from medvlmoe_jax.moe import dispatch
from medvlmoe_jax.moe.layer import DenseFFN, SparseMoE

# What XLA's cost analysis counts, where it is not the FLOPs the implementation computes.
FLOP_NOTES = {
    "cpu_kernel": "opaque: loops, each body counted once",
    "slots": "lax.switch: the largest capacity (C = T) counted",
    "ragged_dot": "CPU lowering: every row x every expert; GPU default lowering: the same "
                  "dense expansion (not compiled here)",
}
OPAQUE = ("cpu_kernel",)


def _shapes(granularity: str, batch: int, dim: int, tokens_per_example: int):
  """(tokens, width): `sample` routes one 2d-wide vector per example, `token` every
  d-wide fused token."""
  if granularity == "sample":
    return batch, 2 * dim
  return batch * tokens_per_example, dim


def _fns(layer, x, valid, mesh):
  """(forward, train) as jitted functions and their arguments (params, x), placed."""
  graphdef, params = nnx.split(layer, nnx.Param)
  if mesh is not None:
    params = jax.device_put(params, sharding.tree_shardings(mesh, {"moe": params})["moe"])
    x = jax.device_put(x, NamedSharding(mesh, sharding.BATCH))
    valid = jax.device_put(valid, NamedSharding(mesh, sharding.BATCH))

  def forward(params, x):
    return nnx.merge(graphdef, params)(x, valid)[0]

  def loss(params, x):
    y, aux = nnx.merge(graphdef, params)(x, valid)
    return jnp.mean(y.astype(jnp.float32) ** 2) + aux["load_balance_loss"]

  return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1))), (params, x)


def _call(fn, args, mesh):
  def call():
    if mesh is None:
      return fn(*args)
    with jax.set_mesh(mesh):
      return fn(*args)
  return call


def _flops(fn, args) -> float:
  """The FLOPs XLA's cost analysis counts for `fn` compiled on `args`."""
  return float(fn.lower(*args).compile().cost_analysis()["flops"])


def run(batch: int = 32, dim: int = 512, hidden: int = 2048, num_experts: int = 8,
        top_k: int = 2, tokens_per_example: int = 96, dtype: str = "float32",
        rounds: int = 7) -> dict:
  compute = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  n = jax.device_count()
  meshes = {"1 device": None}
  if n > 1:
    meshes[f"{n} devices"] = sharding.make_mesh(
        ml_collections.ConfigDict(dict(data=-1, expert=-1)), num_experts)
  results = {"config": dict(batch=batch, dim=dim, hidden=hidden, num_experts=num_experts,
                            top_k=top_k, tokens_per_example=tokens_per_example, dtype=dtype,
                            devices=n, backend=platform.current().platform),
             "cases": [], "impls": []}
  rng = np.random.default_rng(0)
  moe = lambda width, **kw: SparseMoE(width, hidden, num_experts=num_experts, top_k=top_k,
                                      dtype=compute, rngs=nnx.Rngs(0), **kw)
  for granularity in ("sample", "token"):
    tokens, width = _shapes(granularity, batch, dim, tokens_per_example)
    x = jnp.asarray(rng.normal(size=(tokens, width)), compute)
    valid = jnp.ones((tokens,), bool)
    auto = platform.moe_dispatch(tokens * top_k, num_experts, True)
    for mesh_name, mesh in meshes.items():
      layers = {"dense": DenseFFN(width, top_k * hidden, dtype=compute, rngs=nnx.Rngs(0)),
                "moe_capacity_1.25": moe(width, capacity_factor=1.25)}
      # One device: every dropless implementation ('moe_dropless' is the one 'auto' picks).
      impls = sorted(dispatch.IMPLS) if mesh is None else []
      layers.update({f"dropless_{impl}": moe(width, dispatch=impl) for impl in impls})
      if mesh is not None:
        layers["moe_dropless"] = moe(width)
      fns, compiled = {}, {}
      for name, layer in layers.items():
        compiled[name] = _fns(layer, x, valid, mesh)
        fwd, train, args = compiled[name]
        fns[f"{name}/forward"] = _call(fwd, args, mesh)
        fns[f"{name}/train"] = _call(train, args, mesh)
      times = time_interleaved(fns, rounds=rounds)
      median = lambda name, mode: times[f"{name}/{mode}"]["median_s"]
      dropless = "moe_dropless" if mesh is not None else f"dropless_{auto}"
      for mode in ("forward", "train"):
        dense = median("dense", mode)
        case = {"granularity": granularity, "mesh": mesh_name, "mode": mode, "tokens": tokens,
                "width": width, "dense_ms": 1e3 * dense,
                "dropless_impl": auto if mesh is None else "expert-parallel"}
        for name, key in ((dropless, "moe_dropless"), ("moe_capacity_1.25",) * 2):
          case[f"{key}_ms"] = 1e3 * median(name, mode)
          case[f"{key}_over_dense"] = median(name, mode) / dense
        results["cases"].append(case)
      if impls:
        results["impls"] += _impl_cases(granularity, tokens, width, impls, auto, compiled,
                                        median, hidden, top_k, compute, rng)
  return results


def _impl_cases(granularity, tokens, width, impls, auto, compiled, median, hidden, top_k,
                compute, rng):
  """Per implementation: times against the dense FFN, and XLA's FLOPs for the compiled layer
  over those of the same active FLOPs in one expert-sized MLP (top_k x tokens through it),
  compiled the same way."""
  expert = DenseFFN(width, hidden, dtype=compute, rngs=nnx.Rngs(0))
  xk = jnp.asarray(rng.normal(size=(top_k * tokens, width)), compute)
  fwd, train, args = _fns(expert, xk, jnp.ones((top_k * tokens,), bool), None)
  dense_flops = {"forward": _flops(fwd, args), "train": _flops(train, args)}
  cases = []
  for impl in impls:
    fwd, train, args = compiled[f"dropless_{impl}"]
    case = {"granularity": granularity, "impl": impl, "auto": impl == auto, "tokens": tokens,
            "flops_note": FLOP_NOTES.get(impl, "")}
    for mode, fn in (("forward", fwd), ("train", train)):
      counted = _flops(fn, args)
      case[f"{mode}_ms"] = 1e3 * median(f"dropless_{impl}", mode)
      case[f"{mode}_over_dense"] = median(f"dropless_{impl}", mode) / median("dense", mode)
      case[f"xla_flops_{mode}"], case[f"dense_flops_{mode}"] = counted, dense_flops[mode]
      case[f"flops_ratio_{mode}"] = None if impl in OPAQUE else counted / dense_flops[mode]
    cases.append(case)
  return cases


def table(results: dict) -> str:
  lines = [f"MoE layer vs dense FFN with the same active FLOPs ({results['config']})",
           f"{'granularity':<11} {'mesh':<10} {'mode':<8} {'tokens':>7} {'dense ms':>9} "
           f"{'dropless ms':>11} {'ratio':>6} {'cap1.25 ms':>10} {'ratio':>6}  dropless impl"]
  for c in results["cases"]:
    lines.append(f"{c['granularity']:<11} {c['mesh']:<10} {c['mode']:<8} {c['tokens']:>7} "
                 f"{c['dense_ms']:>9.2f} {c['moe_dropless_ms']:>11.2f} "
                 f"{c['moe_dropless_over_dense']:>6.2f} {c['moe_capacity_1.25_ms']:>10.2f} "
                 f"{c['moe_capacity_1.25_over_dense']:>6.2f}  {c['dropless_impl']}")
  if results.get("impls"):
    ratio = lambda r: "opaque" if r is None else f"{r:.2f}"
    lines += ["", "Dropless dispatch implementations, 1 device (* = auto). fwd, train: time / "
              "the dense FFN's; FLOPs: XLA's count for the compiled layer / for top_k x tokens "
              "through one expert MLP",
              f"{'granularity':<11} {'impl':<11} {'fwd ms':>9} {'train ms':>9} {'fwd':>5} "
              f"{'train':>5} {'FLOPs fwd':>9} {'FLOPs train':>11}  note"]
    for c in results["impls"]:
      name = c["impl"] + ("*" if c["auto"] else "")
      lines.append(f"{c['granularity']:<11} {name:<11} {c['forward_ms']:>9.2f} "
                   f"{c['train_ms']:>9.2f} {c['forward_over_dense']:>5.2f} "
                   f"{c['train_over_dense']:>5.2f} {ratio(c['flops_ratio_forward']):>9} "
                   f"{ratio(c['flops_ratio_train']):>11}  {c['flops_note']}")
  return "\n".join(lines)
