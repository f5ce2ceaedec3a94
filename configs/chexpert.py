"""CheXpert, 14 observations with an uncertainty policy chosen at preparation; prepare with data_prep/chexpert.py.

  python launch/train.py --config configs/chexpert.py --config.data.path=data/chexpert \
      --config.model.init_from=converted/clip_biogpt

The paper's recipe (medvlmoe_jax.config.paper_recipe). `configs/chexpert.py:small` trains
tiny encoders from scratch instead (no converted weights needed; for CPUs and smoke tests).
"""

from medvlmoe_jax import config as config_lib


def get_config(arg=None):
  return config_lib.dataset_recipe("chexpert", num_classes=14, task="multilabel", arg=arg)
