"""Train and evaluate MedVLMoE.

  python launch/train.py --config configs/demo.py --workdir runs/demo \
      [--config.train.epochs=5 --config.model.dtype=float32 ...]

A workdir that already holds checkpoints is resumed from the latest one.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from medvlmoe_jax.train.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax logs every file it writes
  workdir = _WORKDIR.value or "runs/" + flags.FLAGS["config"].value.split("/")[-1].rsplit(".", 1)[0]
  train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
