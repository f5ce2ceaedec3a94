"""The MoE layer against a dense FFN with the same active FLOPs (top_k x hidden), forward
and forward+backward, for both granularities, dropless and with capacity, on one device and
on an expert-parallel mesh of all devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from medvlmoe_jax import sharding
from medvlmoe_jax.benchmark.timing import time_interleaved
from medvlmoe_jax.moe.layer import DenseFFN, SparseMoE


def _shapes(granularity: str, batch: int, dim: int, tokens_per_example: int):
  """(tokens, width): `sample` routes one 2d-wide vector per example, `token` every
  d-wide fused token."""
  if granularity == "sample":
    return batch, 2 * dim
  return batch * tokens_per_example, dim


def _fns(layer, x, valid, mesh):
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

  fwd = jax.jit(forward)
  train = jax.jit(jax.grad(loss, argnums=(0, 1)))

  def wrap(fn):
    def call():
      if mesh is None:
        return fn(params, x)
      with jax.set_mesh(mesh):
        return fn(params, x)
    return call
  return wrap(fwd), wrap(train)


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
                            devices=n, backend=jax.default_backend()), "cases": []}
  rng = np.random.default_rng(0)
  for granularity in ("sample", "token"):
    tokens, width = _shapes(granularity, batch, dim, tokens_per_example)
    x = jnp.asarray(rng.normal(size=(tokens, width)), compute)
    valid = jnp.ones((tokens,), bool)
    for mesh_name, mesh in meshes.items():
      layers = {
          "dense": DenseFFN(width, top_k * hidden, dtype=compute, rngs=nnx.Rngs(0)),
          "moe_dropless": SparseMoE(width, hidden, num_experts=num_experts, top_k=top_k,
                                    dtype=compute, rngs=nnx.Rngs(0)),
          "moe_capacity_1.25": SparseMoE(width, hidden, num_experts=num_experts, top_k=top_k,
                                         capacity_factor=1.25, dtype=compute, rngs=nnx.Rngs(0)),
      }
      fns = {}
      for name, layer in layers.items():
        fwd, train = _fns(layer, x, valid, mesh)
        fns[f"{name}/forward"], fns[f"{name}/train"] = fwd, train
      times = time_interleaved(fns, rounds=rounds)
      for mode in ("forward", "train"):
        dense = times[f"dense/{mode}"]["median_s"]
        case = {"granularity": granularity, "mesh": mesh_name, "mode": mode, "tokens": tokens,
                "width": width, "dense_ms": 1e3 * dense}
        for name in ("moe_dropless", "moe_capacity_1.25"):
          t = times[f"{name}/{mode}"]["median_s"]
          case[f"{name}_ms"] = 1e3 * t
          case[f"{name}_over_dense"] = t / dense
        results["cases"].append(case)
  return results


def table(results: dict) -> str:
  lines = [f"MoE layer vs dense FFN with the same active FLOPs ({results['config']})",
           f"{'granularity':<11} {'mesh':<10} {'mode':<8} {'tokens':>7} {'dense ms':>9} "
           f"{'dropless ms':>11} {'ratio':>6} {'cap1.25 ms':>10} {'ratio':>6}"]
  for c in results["cases"]:
    lines.append(f"{c['granularity']:<11} {c['mesh']:<10} {c['mode']:<8} {c['tokens']:>7} "
                 f"{c['dense_ms']:>9.2f} {c['moe_dropless_ms']:>11.2f} "
                 f"{c['moe_dropless_over_dense']:>6.2f} {c['moe_capacity_1.25_ms']:>10.2f} "
                 f"{c['moe_capacity_1.25_over_dense']:>6.2f}")
  return "\n".join(lines)
