"""Two CPU processes on 127.0.0.1 (gloo), 4 simulated devices each, one 8-device mesh:
5 demo steps give the losses of a one-process 8-device run."""

import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT

from medvlmoe_jax.train.metric_writer import read_metrics

ARGS = ["--config", "configs/demo.py", "--config.data.synthetic.num_train=256",
        "--config.data.synthetic.num_val=64", "--config.data.synthetic.num_test=64",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=64",
        "--config.train.max_steps=5", "--config.train.log_every_steps=1",
        "--config.eval.n_boot=10", "--config.mesh.expert=8"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


@pytest.mark.slow   # three training processes (CI's `pytest -m slow`)
def test_two_processes_match_one_process(tmp_path):
  base = dict(os.environ, PYTHONPATH=ROOT)
  one = str(tmp_path / "one")
  subprocess.run([sys.executable, "launch/train.py", "--workdir", one] + ARGS, cwd=ROOT,
                 env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                 check=True, capture_output=True, timeout=600)

  two = str(tmp_path / "two")
  port = _free_port()
  env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, "launch/train.py", "--workdir", two, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"] + ARGS,
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert "mesh {'data': 1, 'expert': 8} over 8 devices (2 processes)" in outs[0]

  ref, got = _losses(one), _losses(two)
  assert sorted(ref) == sorted(got) == [1, 2, 3, 4, 5]
  for s in ref:
    assert abs(ref[s] - got[s]) <= 1e-5, (s, ref[s], got[s])
  assert os.path.isdir(os.path.join(two, "checkpoints", "5"))
