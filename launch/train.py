"""Train and evaluate MedVLMoE.

  python launch/train.py --config configs/demo.py --workdir runs/demo \
      [--config.train.epochs=5 --config.model.dtype=float32 ...]

A workdir that already holds checkpoints is resumed from the latest one. A config or data
problem ends in one 'error: ...' line (medvlmoe_jax/cli.py).

Several processes (hosts): on SLURM nothing is needed (see launch/slurm/train.sbatch);
elsewhere give every process the same --coordinator_address and --num_processes and its
own --process_id.
"""

import logging

from absl import flags
from ml_collections import config_flags

from medvlmoe_jax import cli, distributed
from medvlmoe_jax.experiment import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax logs every file it writes
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  workdir = _WORKDIR.value or "runs/" + flags.FLAGS["config"].value.split("/")[-1].rsplit(".", 1)[0]
  train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  cli.run(main)
