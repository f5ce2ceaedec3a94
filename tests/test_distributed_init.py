"""SLURM start-up: which GPUs each process asks JAX for, in a faked SLURM environment, with
`jax.distributed.initialize` recorded rather than run. JAX alone gives every task the one GPU
numbered SLURM_LOCALID, so one task per 8-GPU node would see a single GPU."""

from __future__ import annotations

import os

import jax
import pytest
from jax._src import clusters

from medvlmoe_jax import distributed
from medvlmoe_jax.cli import BadInputError

ALL = list(range(8))


def _job(nodes: int, tasks_per_node: int, node: int, local: int, gpus: int | str | None = 8,
         visible: str | None = None, tasks_var: str = "SLURM_STEP_TASKS_PER_NODE") -> dict:
  env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": f"gpu[001-{nodes:03d}]",
         "SLURM_NTASKS": str(nodes * tasks_per_node),
         "SLURM_PROCID": str(node * tasks_per_node + local), "SLURM_LOCALID": str(local),
         "SLURM_NODEID": str(node), "SLURM_STEP_NUM_NODES": str(nodes),
         tasks_var: f"{tasks_per_node}(x{nodes})"}
  if gpus is not None:
    env["SLURM_GPUS_ON_NODE"] = str(gpus)
  if visible is not None:
    env["CUDA_VISIBLE_DEVICES"] = visible
  return env


@pytest.fixture
def calls(monkeypatch):
  """Clean environment; `set_env(env)` installs one; the list holds initialize's arguments
  and what JAX's auto-detection makes of them."""
  for key in list(os.environ):
    if key.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS",
                       "CUDA_VISIBLE_DEVICES")):
      monkeypatch.delenv(key)
  recorded = []

  def fake_initialize(coordinator_address=None, num_processes=None, process_id=None,
                      local_device_ids=None, **kw):
    derived = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        coordinator_address, num_processes, process_id, local_device_ids, None, 10)
    recorded.append(dict(local_device_ids=local_device_ids, derived=derived, **kw))

  monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
  collectives = jax.config.jax_cpu_collectives_implementation
  yield recorded
  jax.config.update("jax_cpu_collectives_implementation", collectives)


def _run(monkeypatch, calls, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  distributed.initialize()
  assert len(calls) == 1
  return calls.pop()


def test_one_task_per_node_sees_all_gpus(monkeypatch, calls):
  for node in range(2):
    got = _run(monkeypatch, calls, _job(nodes=2, tasks_per_node=1, node=node, local=0,
                                        visible="0,1,2,3,4,5,6,7"))
    assert got["local_device_ids"] == ALL
    assert got["derived"] == ("gpu001:61586", 2, node, ALL)   # port 61440 + 4242 % 4096


def test_one_task_per_node_from_ntasks_per_node(monkeypatch, calls):
  """sbatch --ntasks-per-node=1 alone, and no CUDA_VISIBLE_DEVICES."""
  env = _job(nodes=2, tasks_per_node=1, node=1, local=0, tasks_var="SLURM_NTASKS_PER_NODE")
  env["SLURM_NTASKS_PER_NODE"] = "1"
  assert _run(monkeypatch, calls, env)["local_device_ids"] == ALL


def test_one_task_per_gpu_bound_by_slurm_sees_gpu_0(monkeypatch, calls):
  """--gpus-per-task=1: SLURM sets CUDA_VISIBLE_DEVICES to the task's one GPU."""
  for local in (0, 3, 7):
    got = _run(monkeypatch, calls, _job(nodes=2, tasks_per_node=8, node=1, local=local,
                                        visible=str(local)))
    assert got["local_device_ids"] == [0]
    assert got["derived"][1:] == (16, 8 + local, [0])


@pytest.mark.parametrize("gpus", [None, 0, 1])
def test_one_task_per_gpu_bound_without_the_node_count(gpus):
  """SLURM_GPUS_ON_NODE unset, 0 or counting this task's GPUs only: one GPU for 8 tasks."""
  env = _job(nodes=1, tasks_per_node=8, node=0, local=6, gpus=gpus, visible="6")
  assert distributed.slurm_local_device_ids(env) == [0]


def test_one_task_per_gpu_all_visible_sees_its_own(monkeypatch, calls):
  for local in (0, 5):
    got = _run(monkeypatch, calls, _job(nodes=2, tasks_per_node=8, node=0, local=local,
                                        visible="0,1,2,3,4,5,6,7"))
    assert got["local_device_ids"] == got["derived"][3] == [local]


def test_two_gpus_per_task(monkeypatch, calls):
  assert _run(monkeypatch, calls, _job(nodes=1, tasks_per_node=4, node=0, local=2)
              )["local_device_ids"] == [4, 5]
  assert _run(monkeypatch, calls, _job(nodes=1, tasks_per_node=4, node=0, local=2,
                                       visible="4,5"))["local_device_ids"] == [0, 1]


def test_uneven_tasks_per_node_list():
  env = _job(nodes=4, tasks_per_node=2, node=3, local=0, gpus=4)
  env["SLURM_STEP_TASKS_PER_NODE"] = "2(x3),1"
  assert distributed.slurm_local_device_ids(env) == [0, 1, 2, 3]


def test_jax_local_device_ids_keeps_precedence(monkeypatch, calls):
  env = _job(nodes=2, tasks_per_node=1, node=0, local=0, visible="0,1,2,3,4,5,6,7")
  env["JAX_LOCAL_DEVICE_IDS"] = "0,1"
  assert _run(monkeypatch, calls, env)["local_device_ids"] is None   # JAX reads the variable


def test_gpus_that_do_not_split_over_tasks(monkeypatch, calls):
  env = _job(nodes=1, tasks_per_node=3, node=0, local=1)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(BadInputError, match="SLURM_GPUS_ON_NODE.*3 tasks.*SLURM_STEP_TASKS"):
    distributed.initialize()
  assert not calls


def test_no_gpu_information_passes_no_ids(monkeypatch, calls):
  got = _run(monkeypatch, calls, _job(nodes=2, tasks_per_node=4, node=1, local=2, gpus=None))
  assert got["local_device_ids"] is None
  assert got["derived"][3] == [2]        # JAX's default, ignored on CPUs


def test_open_mpi_keeps_jax_default(monkeypatch, calls):
  env = _job(nodes=2, tasks_per_node=1, node=0, local=0)
  env.update(OMPI_MCA_orte_hnp_uri="1234.0;tcp://10.0.0.1:5000", OMPI_COMM_WORLD_SIZE="2",
             OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_LOCAL_RANK="0")
  got = _run(monkeypatch, calls, env)
  assert got["local_device_ids"] is None
  assert got["derived"][1:] == (2, 1, [0])     # JAX chose Open MPI: its rank, not SLURM_PROCID


def test_explicit_coordinator_unchanged(monkeypatch, calls):
  for k, v in _job(nodes=2, tasks_per_node=1, node=0, local=0).items():
    monkeypatch.setenv(k, v)
  distributed.initialize("10.0.0.1:1234", 2, 0)
  assert calls[0]["derived"] == ("10.0.0.1:1234", 2, 0, [0])    # JAX's own choice, as before


def test_bad_slurm_values():
  with pytest.raises(BadInputError, match="SLURM_LOCALID"):
    distributed.slurm_local_device_ids(_job(nodes=1, tasks_per_node=2, node=0, local=2))
  with pytest.raises(BadInputError, match="CUDA_VISIBLE_DEVICES"):
    distributed.slurm_local_device_ids(_job(nodes=1, tasks_per_node=8, node=0, local=1,
                                            visible="0,1,2"))
  with pytest.raises(BadInputError, match="SLURM_GPUS_ON_NODE"):
    distributed.slurm_local_device_ids(_job(nodes=1, tasks_per_node=1, node=0, local=0,
                                            gpus="eight"))


def test_jax_auto_detection_with_and_without_the_ids(monkeypatch, calls):
  """JAX's real auto-detection (private API of jax 0.10): all 8 GPUs with our ids, only GPU
  SLURM_LOCALID without them -- the bug this fixes."""
  env = _job(nodes=2, tasks_per_node=1, node=1, local=0)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  ids = distributed.slurm_local_device_ids(env)
  detect = clusters.ClusterEnv.auto_detect_unset_distributed_params
  assert detect(None, None, None, ids, None, 10) == ("gpu001:61586", 2, 1, ALL)
  assert detect(None, None, None, None, None, 10)[3] == [int(env["SLURM_LOCALID"])]
