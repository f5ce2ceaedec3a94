"""Runs tests/multidevice (expert parallelism on 8 simulated CPU devices) in a subprocess,
because the device count is fixed when JAX starts."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _run_on_8_devices(marker: str):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             MEDVLMOE_MULTIDEVICE="1", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         "-o", "addopts=", "-m", marker, "tests/multidevice"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  print(proc.stdout[-6000:])
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout   # the marker selected something


def test_expert_parallel_suite_on_8_devices():
  _run_on_8_devices("not slow")


@pytest.mark.slow   # whole training runs on the mesh
def test_training_on_8_devices():
  _run_on_8_devices("slow")
