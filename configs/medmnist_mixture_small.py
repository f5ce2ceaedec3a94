"""RetinaMNIST (fundus), BreastMNIST (ultrasound) and PneumoniaMNIST (chest X-ray) at 28 px,
small encoders from scratch: each alone, or one model on all three (a head each).

  python data_prep/medmnist.py --src retinamnist.npz --out data/retinamnist28 --image_size 28
  python data_prep/medmnist.py --src BREAST.npz --name breastmnist --out data/breastmnist28 \
      --image_size 28 [--accept_mismatch]          # likewise pneumoniamnist
  python launch/train.py --config configs/medmnist_mixture_small.py:ARG --workdir runs/X \
      --config.seed=0

ARG: `retinamnist`, `breastmnist` or `pneumoniamnist` (that set alone), `mix_none` (the
mixture, the paper's router) or `mix_modality` (the mixture, router told the modality), with
an optional data root: `mix_none,/path/to/data` (default `data`). The mixture samples each
set in proportion to its training split, so that an epoch of the mixture is an epoch of
each set, and the alone and mixed runs see every example equally often. The same recipe for
every run (no horizontal flips, which chest X-rays must not get); model selection on the
validation split only (mean over the sets for a mixture).
"""

import os

from medvlmoe_jax import config as config_lib

ARGS = ("retinamnist", "breastmnist", "pneumoniamnist", "mix_none", "mix_modality")
SETS = {"retinamnist": ("ordinal", 5, 1080, "fundus"),
        "breastmnist": ("multiclass", 2, 546, "ultrasound"),
        "pneumoniamnist": ("multiclass", 2, 3882, "chest x-ray")}


def get_config(arg="mix_modality"):
  name, _, root = arg.partition(",")
  root = root or "data"
  task, classes = SETS.get(name, ("multiclass", 2))[:2]
  c = config_lib.dataset_recipe(f"{name}28", num_classes=classes, task=task, arg="small",
                                small_image_size=28)
  c.data.path = os.path.join(root, f"{name}28")
  c.data.batch_size = 32
  c.data.augment.enabled = True
  c.data.augment.hflip = False
  c.train.epochs = 30
  c.train.warmup_epochs = 2
  c.train.patience = 8
  c.eval.n_boot = 500
  if name.startswith("mix_"):
    context = name[len("mix_"):]
    if context not in ("none", "modality"):
      raise ValueError(f"unknown mixture {name!r}: mix_none or mix_modality")
    c.data.path = None
    c.data.mixture = tuple(
        {"path": os.path.join(root, f"{s}28"), "weight": float(n), "modality": modality}
        for s, (_, _, n, modality) in SETS.items())
    c.model.moe.router_context = context
  elif name not in SETS:
    raise ValueError(f"unknown set {name!r}: one of {sorted(SETS)}, mix_none, mix_modality")
  return c
