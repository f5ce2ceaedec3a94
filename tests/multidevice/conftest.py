"""Tests here need 8 (simulated) devices; tests/test_multidevice.py runs them in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8."""

import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if jax.device_count() != 8:
  raise RuntimeError("tests/multidevice needs 8 devices: run it through tests/test_multidevice.py "
                     "or with XLA_FLAGS=--xla_force_host_platform_device_count=8")


@pytest.fixture
def devices():
  return jax.devices()
