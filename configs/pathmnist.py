"""PathMNIST (9 tissue classes); prepare with data_prep/medmnist.py --image_size 224.

  python launch/train.py --config configs/pathmnist.py --config.data.path=data/pathmnist \
      --config.model.init_from=converted/clip_biogpt

The paper's recipe (medvlmoe_jax.config.paper_recipe). `configs/pathmnist.py:small` trains
tiny encoders from scratch instead (no converted weights needed; for CPUs and smoke tests).
"""

from medvlmoe_jax import config as config_lib


def get_config(arg=None):
  return config_lib.dataset_recipe("pathmnist", num_classes=9, task="multiclass",
                                   arg=arg, small_image_size=28)
