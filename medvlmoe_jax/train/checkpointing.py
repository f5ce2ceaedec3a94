"""Orbax checkpoints of the train state, the data iterator and the early-stopping record.

Writes are atomic (Orbax renames a finished temporary directory), so a run killed at any
moment leaves the previous checkpoints intact. The latest `keep` checkpoints are kept for
resuming, and the one with the best validation mean AUC is kept whatever its age.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "val_mean_auc"


def _best_metric(metrics) -> tuple[float, int]:
  """Higher AUC first; among equal AUCs the earliest step, as the trainer's early stopping
  (which needs a strict improvement) counts it."""
  value = metrics.get(BEST_METRIC)
  return (float("-inf") if value is None else float(value), -int(metrics.get("step", 0)))


class Checkpointer:

  def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=_best_metric, n=1),  # ascending: keeps the highest,
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=False, create=not read_only,
        read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "trainer"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, trainer: dict, metrics: dict | None = None):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        trainer=ocp.args.JsonSave(trainer)),
        metrics=None if metrics is None else dict(metrics, step=step), force=True)
    self.manager.wait_until_finished()

  def _check_step(self, step: int) -> None:
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(have {self.all_steps()})")

  def restore(self, step: int, target_state):
    """Returns (state, data_state, trainer); `target_state` fixes structure and shardings."""
    self._check_step(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore(),
        trainer=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["trainer"]

  def restore_params(self, step: int, abstract_params, shardings=None):
    """Only `state.params` of checkpoint `step` (an Orbax partial restore: no optimizer
    state is read or built), placed by `shardings` (default: the first device)."""
    self._check_step(step)
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: device, abstract_params)
    target = {"params": jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params,
        shardings)}
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
    return out["state"]["params"]

  def read_trainer(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(trainer=ocp.args.JsonRestore()))["trainer"]

  def close(self):
    self.manager.close()
