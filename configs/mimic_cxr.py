"""MIMIC-CXR-JPG 2.0.0, 14 CheXpert labels; text from INDICATION/HISTORY/COMPARISON only; prepare with data_prep/mimic_cxr.py.

  python launch/train.py --config configs/mimic_cxr.py --config.data.path=data/mimic_cxr \
      --config.model.init_from=converted/clip_biogpt

The paper's recipe (medvlmoe_jax.config.paper_recipe). `configs/mimic_cxr.py:small` trains
tiny encoders from scratch instead (no converted weights needed; for CPUs and smoke tests).
"""

from medvlmoe_jax import config as config_lib


def get_config(arg=None):
  return config_lib.dataset_recipe("mimic_cxr", num_classes=14, task="multilabel", arg=arg)
