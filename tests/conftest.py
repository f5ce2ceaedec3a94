import os
import sys

import pytest

# The suite runs on the CPU. With the gpu-compile extra installed, the CUDA plugin would
# otherwise try to start a GPU at JAX's start (and lose its compile-only topology API).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# tests/multidevice needs 8 simulated devices, set before JAX starts: test_multidevice.py
# runs it in a subprocess.
collect_ignore = [] if os.environ.get("MEDVLMOE_MULTIDEVICE") else ["multidevice"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shrunk_demo_config(num_train: int = 256):
  """The demo config, shrunk so that a training run takes seconds."""
  sys.path.insert(0, ROOT)
  from configs import demo
  c = demo.get_config()
  c.data.synthetic.num_train = num_train
  c.data.synthetic.num_val = 64
  c.data.synthetic.num_test = 64
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.eval.n_boot = 20
  c.train.epochs = 2
  c.train.warmup_epochs = 1
  c.train.log_every_steps = 1
  return c


@pytest.fixture(autouse=True)
def _float32_matmuls(request):
  """Tests marked float32_parity compare float32 results to ~1e-5. JAX's default matmul
  precision lets A100 / H100 run float32 matmuls in TF32 (errors ~1e-3), so these tests set
  the precision they assume (HIGHEST, true float32) instead of depending on the device."""
  if request.node.get_closest_marker("float32_parity") is None:
    yield
    return
  import jax   # here, not at import: tests/multidevice sets XLA_FLAGS first
  with jax.default_matmul_precision("float32"):
    yield


@pytest.fixture
def demo_config():
  return shrunk_demo_config()
