"""RetinaMNIST at 28 px with small encoders trained from scratch and the full fusion + MoE
head: a CPU-sized run (a few minutes per seed on 2 cores).

  python data_prep/medmnist.py --src retinamnist.npz --out data/retinamnist28
  python launch/train.py --config configs/retinamnist_small.py --workdir runs/retina_s0 --config.seed=0

Model selection uses the validation split only (early stopping on val mean AUC); the test
split is evaluated once, on the best-val checkpoint.
"""

from medvlmoe_jax import config as config_lib


def get_config():
  c = config_lib.dataset_recipe("retinamnist28", num_classes=5, task="ordinal", arg="small",
                                small_image_size=28)
  c.data.batch_size = 32
  c.data.augment.enabled = True
  c.data.augment.hflip = True        # fundus photographs: no laterality convention to keep
  c.train.epochs = 40
  c.train.warmup_epochs = 2
  c.train.patience = 10
  c.eval.n_boot = 500
  return c
