"""Runs tests/multidevice (expert parallelism on 8 simulated CPU devices) in a subprocess,
because the device count is fixed when JAX starts."""

import os
import subprocess
import sys

from conftest import ROOT


def test_expert_parallel_suite_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             MEDVLMOE_MULTIDEVICE="1", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         "-o", "addopts=", "tests/multidevice"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  print(proc.stdout[-6000:])
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
