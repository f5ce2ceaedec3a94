"""The device mesh and where every array lives on it (docs/design.md §3).

Mesh axes are ('data', 'expert'). The batch is split over both axes; the stacked expert
weights (and their optimizer moments) are split over 'expert' on their leading K axis;
everything else is replicated. One rule by parameter path, as V-MoE's partitioning does.
"""

from __future__ import annotations

import math
import re

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from medvlmoe_jax.config import ConfigError
from medvlmoe_jax.tree import path_str

AXES = ("data", "expert")
BATCH = P(AXES)                       # leading (batch or token) axis over every device
EXPERT_PARAM = r"moe/(w1|b1|w2|b2)$"  # stacked (K, ...) expert weights, their Adam moments too


def make_mesh(mesh_cfg: ml_collections.ConfigDict, num_experts: int, devices=None) -> Mesh:
  """`mesh.expert=-1` takes the largest device count that divides the experts;
  `mesh.data=-1` takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  expert = mesh_cfg.expert if mesh_cfg.expert != -1 else math.gcd(num_experts, n)
  if expert <= 0 or n % expert:
    raise ConfigError(f"mesh.expert={mesh_cfg.expert} does not divide the {n} devices")
  if num_experts % expert:
    raise ConfigError(f"mesh.expert={expert} does not divide model.moe.num_experts={num_experts}")
  data = mesh_cfg.data if mesh_cfg.data != -1 else n // expert
  if data * expert != n:
    raise ConfigError(f"mesh data={data} x expert={expert} != {n} devices")
  return jax.make_mesh((data, expert), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def partition_spec(path: str, ndim: int) -> P:
  if ndim >= 1 and re.search(EXPERT_PARAM, path):
    return P("expert")
  return P()


def tree_shardings(mesh: Mesh, tree):
  """NamedSharding per leaf of a params / optimizer / train-state tree, by its path."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, partition_spec(path_str(p), len(np.shape(x)))), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH)


def check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {mesh.size} devices of the mesh")


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The contiguous rows of a global batch that this process's devices hold."""
  index = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  starts = [i[0].start or 0 for i in index.values()]
  stops = [global_batch if i[0].stop is None else i[0].stop for i in index.values()]
  rows = slice(min(starts), max(stops))
  if sum(b - a for a, b in set(zip(starts, stops))) != rows.stop - rows.start:
    raise ValueError("this process's batch rows are not contiguous on the mesh")
  return rows


def put_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Process-local rows -> global arrays split over ('data', 'expert')."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def to_host(tree):
  """Global (possibly multi-process) arrays -> full NumPy arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def describe(mesh: Mesh, params) -> dict:
  """The mesh, its devices and each expert weight's per-device shard shape."""
  shards = {}
  for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = path_str(p)
    if re.search(EXPERT_PARAM, path):
      shards[path] = {"global": list(x.shape),
                      "per_device": list(x.sharding.shard_shape(x.shape)),
                      "spec": str(x.sharding.spec)}
  return {"mesh": dict(mesh.shape), "num_devices": int(mesh.size),
          "devices": [str(d) for d in mesh.devices.reshape(-1)],
          "process_count": jax.process_count(), "expert_shards": shards}
