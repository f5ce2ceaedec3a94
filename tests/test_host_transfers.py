"""The training loop keeps the host out of the devices' way: between log steps nothing is
fetched from them, so the host queues the next steps while the devices compute.

On CPUs a device array already lives in host memory and `jax.transfer_guard` lets its fetches
through unchecked, so they are counted where they pass: `ArrayImpl._value` (`float(x)`,
`bool(x)`, `f"{x:.4f}"`, `jax.device_get(x)`, ...) and `np.asarray` / `np.array` /
`np.asanyarray` of a `jax.Array` (`x.item()` too), which read its buffer directly. NumPy's
own C routines (a ufunc on a `jax.Array`) escape the count; the guard, set as well, catches
them on accelerators.
"""

import contextlib
import os
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as array_lib   # ArrayImpl: where every NumPy value is read

from medvlmoe_jax import sharding
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.train import trainer as trainer_lib
from medvlmoe_jax.train.metric_writer import MetricWriter, read_metrics

from conftest import shrunk_demo_config

_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller() -> str:
  """file:line of the innermost frame in this project outside this test: where a fetch is."""
  for frame in reversed(traceback.extract_stack()[:-2]):
    if frame.filename.startswith(_OURS) and frame.filename != __file__:
      return f"{os.path.relpath(frame.filename, _OURS)}:{frame.lineno} {frame.line}"
  return "?"


@pytest.fixture
def fetches(monkeypatch):
  """A list that gets (tag, shape, where) for every device array fetched to the host, `tag`
  being `fetches.tag` at the time (set by the test)."""
  class Fetches(list):
    tag = None
  record = Fetches()
  original = array_lib.ArrayImpl._value

  def value(self):
    record.append((record.tag, self.shape, _caller()))
    return original.fget(self)
  monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(value))

  def counted(convert):
    def call(a, *args, **kwargs):
      if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
        record.append((record.tag, a.shape, _caller()))
      return convert(a, *args, **kwargs)
    return call
  for name in ("asarray", "array", "asanyarray"):
    monkeypatch.setattr(np, name, counted(getattr(np, name)))
  return record


def test_every_kind_of_fetch_is_counted(fetches):
  x = jnp.ones((3,)) + 1
  float(x[0])
  np.asarray(x)
  bool(x[1] > 0)
  jax.device_get({"x": x})
  x[2].item()
  f"{x[0]:.4f}"
  np.asarray(np.ones(2))
  assert len(fetches) == 6


def test_only_log_eval_and_checkpoint_steps_fetch(tmp_path, monkeypatch, fetches):
  """Each step's window, from fetching its batch to fetching the next one, refuses device ->
  host transfers unless the step logs, validates or checkpoints; the fetches counted in the
  windows and the logged rows show that exactly those steps fetch."""
  c = shrunk_demo_config(num_train=64)  # a small vision + MoE model: compiling dominates
  c.data.batch_size = 8                 # 8 steps per epoch
  c.model.text.enabled = False
  c.model.vision.layers = 1
  c.train.max_steps = 8
  c.train.log_every_steps = 3
  c.train.eval_every_epochs = 0.5       # validate and checkpoint at 4 and 8 (the last step)
  fetching = {3, 4, 6, 8}
  exp = trainer_lib.create_experiment(c)
  assert exp.total_steps == 8
  guard = contextlib.ExitStack()
  real_iterator = pipeline.train_iterator

  def watched(*args, **kwargs):
    it = real_iterator(*args, **kwargs)

    class Watched:
      def __next__(self):
        guard.close()                  # the previous step's window ends here
        fetches.tag = (fetches.tag or 0) + 1
        if fetches.tag not in fetching:
          guard.enter_context(jax.transfer_guard_device_to_host("disallow_explicit"))
        return next(it)
      def __getattr__(self, name):
        return getattr(it, name)
    return Watched()

  monkeypatch.setattr(pipeline, "train_iterator", watched)
  real_put, shipped = sharding.put_batch, []

  def put_batch(batch, mesh):
    shipped.append(np.asarray(batch["image"]).dtype)
    return real_put(batch, mesh)

  monkeypatch.setattr(sharding, "put_batch", put_batch)
  writer = MetricWriter(str(tmp_path))
  try:
    record = trainer_lib.train(exp, str(tmp_path), lambda params: 0.5, writer)
  finally:
    guard.close()
    writer.close()
  assert record["last_step"] == 8
  # Images cross to the device as uint8 (normalised there): a quarter of float32's bytes.
  assert len(shipped) >= 8 and set(shipped) == {np.dtype(np.uint8)}
  stray = sorted({(step, where) for step, _, where in fetches
                  if step is not None and step not in fetching})
  assert not stray, "device -> host fetches between log steps:\n" + "\n".join(
      f"  step {step}: {where}" for step, where in stray)
  assert {step for step, _, _ in fetches if step is not None} == fetching
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows if r["split"] == "train"] == [3, 4, 6, 8]
  assert [r["step"] for r in rows if r["split"] == "val"] == [4, 8]
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [4, 8]
