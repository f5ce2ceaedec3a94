"""The ablations of the paper's Table 2 for one config: full / no MoE / no fusion / no text /
vision only, each trained and tested, then one markdown table with the deltas.

  python launch/ablate.py --config configs/retinamnist_small.py --root runs/ablate_retina

Finished variants (root/<variant>/test_metrics.json) are reused; others resume.
"""

import logging

from absl import flags
from ml_collections import config_flags

from medvlmoe_jax import ablations, cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_ROOT = flags.DEFINE_string("root", None, "Directory for the variants' workdirs.", required=True)
_ONLY = flags.DEFINE_list("variants", None, f"Subset of {list(ablations.VARIANTS)}.")


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  print(ablations.run(_CONFIG.value, _ROOT.value, _ONLY.value))


if __name__ == "__main__":
  cli.run(main)
