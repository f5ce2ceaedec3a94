"""ChestX-ray14 (NIH), 14 findings; prepare with data_prep/chestxray14.py.

  python launch/train.py --config configs/chestxray14.py --config.data.path=data/chestxray14 \
      --config.model.init_from=converted/clip_biogpt

The paper's recipe (medvlmoe_jax.config.paper_recipe). `configs/chestxray14.py:small` trains
tiny encoders from scratch instead (no converted weights needed; for CPUs and smoke tests).
"""

from medvlmoe_jax import config as config_lib


def get_config(arg=None):
  return config_lib.dataset_recipe("chestxray14", num_classes=14, task="multilabel", arg=arg)
