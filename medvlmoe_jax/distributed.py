"""Multi-process start-up on JAX's own distributed runtime.

Order of precedence: explicit flags (coordinator address, process count, process id), then
cluster auto-detection by `jax.distributed.initialize()` (SLURM, Open MPI, ...), else a
single process. On CPUs, cross-process collectives use gloo.

Under SLURM, JAX alone would give every process the one GPU numbered SLURM_LOCALID, which
breaks one process per node (8 GPUs each); `slurm_local_device_ids` works out the right GPUs
for one process per node and for one per GPU. JAX_LOCAL_DEVICE_IDS still overrides it.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax

from medvlmoe_jax.cli import BadInputError

log = logging.getLogger(__name__)

# What JAX's SlurmCluster needs to be detected (jax/_src/clusters/slurm_cluster.py).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
# Tasks on each node, most specific first: srun's step layout, then the allocation's.
_TASKS_PER_NODE_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                        "SLURM_NTASKS_PER_NODE")


def _in_multi_task_cluster() -> bool:
  return (int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except ValueError:
    raise BadInputError(f"{name}={env[name]!r} is not a whole number") from None


def _tasks_per_node(value: str, name: str) -> list[int]:
  """SLURM's compressed form, '2(x3),1' -> [2, 2, 2, 1]."""
  out = []
  try:
    for part in value.split(","):
      count, _, repeat = part.partition("(x")
      out += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
  except ValueError:
    raise BadInputError(f"{name}={value!r} is not a SLURM task count such as '2(x3),1'") from None
  return out


def _tasks_on_node(env: Mapping[str, str]) -> tuple[int, str] | None:
  """This node's task count and the variable it came from."""
  for name in _TASKS_PER_NODE_VARS:
    if not env.get(name):
      continue
    if name == "SLURM_NTASKS_PER_NODE":      # one plain count for every node
      return _int(env, name), name
    counts = _tasks_per_node(env[name], name)
    node = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    if not 0 <= node < len(counts):
      raise BadInputError(f"SLURM_NODEID={node} has no entry in {name}={env[name]!r}")
    return counts[node], name
  return None


def _visible_gpus(env: Mapping[str, str]) -> int | None:
  """How many GPUs CUDA_VISIBLE_DEVICES lets this process see (None: not restricted)."""
  value = env.get("CUDA_VISIBLE_DEVICES")
  if value is None:
    return None
  if value.strip() == "NoDevFiles":          # what SLURM sets for a step without GPUs
    return 0
  return len([d for d in value.split(",") if d.strip()])


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """This SLURM task's GPUs, as ids among the GPUs it can see (JAX's `local_device_ids`;
  CUDA numbers the visible GPUs from 0, whatever CUDA_VISIBLE_DEVICES names).

  k = GPUs on the node / tasks on the node. A task that sees only its k GPUs (SLURM bound
  them, e.g. --gpus-per-task) gets 0..k-1; a task that sees all the node's gets its own
  k-block. A task seeing fewer GPUs than the node has tasks can only be seeing its own.
  None without GPU information (CPU nodes), where JAX's default does no harm.
  """
  visible = _visible_gpus(env)
  gpus_var = "SLURM_GPUS_ON_NODE"
  on_node = _int(env, gpus_var) if env.get(gpus_var) else 0
  if not on_node:                             # unset, or 0 in a step asking --gpus-per-task
    gpus_var, on_node = "CUDA_VISIBLE_DEVICES", visible
  tasks = _tasks_on_node(env)
  if not on_node or tasks is None or "SLURM_LOCALID" not in env:
    return None
  n_tasks, tasks_var = tasks
  local = _int(env, "SLURM_LOCALID")
  if not 0 <= local < n_tasks:
    raise BadInputError(f"SLURM_LOCALID={local} is not below the {n_tasks} tasks on this node "
                        f"({tasks_var})")
  k = on_node // n_tasks if on_node % n_tasks == 0 else None
  if visible and (visible == k or (k is None and visible < n_tasks)):
    return list(range(visible))
  if k is None:
    raise BadInputError(f"{gpus_var}: {on_node} GPUs do not split evenly over {n_tasks} tasks "
                        f"on this node ({tasks_var}); use a divisor or set JAX_LOCAL_DEVICE_IDS")
  if visible is None or visible == on_node:
    return list(range(local * k, (local + 1) * k))
  raise BadInputError(f"CUDA_VISIBLE_DEVICES: this task sees {visible} GPUs, neither its own "
                      f"{k} nor the node's {on_node} ({gpus_var}); set JAX_LOCAL_DEVICE_IDS")


def _auto_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """The ids to hand JAX's auto-detection; None keeps JAX's own choice."""
  if env.get("JAX_LOCAL_DEVICE_IDS"):
    log.info("local devices from JAX_LOCAL_DEVICE_IDS=%s", env["JAX_LOCAL_DEVICE_IDS"])
    return None
  # JAX tries Open MPI before SLURM (jax/_src/clusters/__init__.py): mpirun inside an
  # allocation stays with JAX's Open MPI choice.
  if "OMPI_MCA_orte_hnp_uri" in env or not all(v in env for v in _SLURM_VARS):
    return None
  ids = slurm_local_device_ids(env)
  if ids is None:
    log.info("SLURM without GPU information: JAX's default local devices")
  else:
    log.info("SLURM task %s (local %s): local_device_ids=%s", env["SLURM_PROCID"],
             env["SLURM_LOCALID"], ids)
  return ids


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  if coordinator_address is None and not _in_multi_task_cluster():
    return
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise BadInputError("--coordinator_address needs --num_processes and --process_id")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:      # cluster auto-detection
    jax.distributed.initialize(local_device_ids=_auto_local_device_ids(os.environ))
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
