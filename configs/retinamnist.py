"""RetinaMNIST (5 ordinal grades of diabetic retinopathy); prepare with data_prep/medmnist.py --image_size 224.

  python launch/train.py --config configs/retinamnist.py --config.data.path=data/retinamnist \
      --config.model.init_from=converted/clip_biogpt

The paper's recipe (medvlmoe_jax.config.paper_recipe). `configs/retinamnist.py:small` trains
tiny encoders from scratch instead (no converted weights needed; for CPUs and smoke tests).
"""

from medvlmoe_jax import config as config_lib


def get_config(arg=None):
  return config_lib.dataset_recipe("retinamnist", num_classes=5, task="ordinal",
                                   arg=arg, small_image_size=28)
