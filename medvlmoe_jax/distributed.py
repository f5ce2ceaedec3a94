"""Multi-process start-up on JAX's own distributed runtime.

Order of precedence: explicit flags (coordinator address, process count, process id), then
cluster auto-detection by `jax.distributed.initialize()` (SLURM, Open MPI, ...), else a
single process. On CPUs, cross-process collectives use gloo.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def _in_multi_task_cluster() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  if coordinator_address is None and not _in_multi_task_cluster():
    return
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    jax.distributed.initialize()      # cluster auto-detection
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
