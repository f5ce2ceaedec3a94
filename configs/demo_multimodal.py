"""One model across two (synthetic) modalities, about 75 s on a 2-core CPU: the demo's findings drawn
as bright squares on a dark background ("x-ray") and dark on a bright one ("fundus"), each
with its own head; each example's text names its image's findings, so that the image-text
alignment can be checked by retrieval. The router sees the modality
(`moe.router_context=modality`); evaluation reports each dataset, retrieval Recall@k and how
much the experts specialise by modality (docs/design.md §2).
"""

import os
import runpy

# The demo's config (configs/demo.py), loaded by path: config files are not a package on
# sys.path when launch/train.py reads them.
_demo = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))


def get_config():
  c = _demo["get_config"]()
  c.data.name = "synthetic"
  common = dict(num_train=1024, num_val=256, num_test=256, describe=True)
  c.data.mixture = (
      {"synthetic": dict(common, num_classes=6, seed=1), "name": "xray", "modality": "x-ray"},
      {"synthetic": dict(common, num_classes=4, seed=2, modality=1), "name": "fundus",
       "modality": "fundus"})
  c.model.moe.router_context = "modality"
  c.model.align = True
  c.train.align_weight = 1.0
  c.train.epochs = 30
  c.train.eval_every_epochs = 3.0
  c.train.patience = 10              # validation AUC saturates early; alignment takes longer
  c.eval.n_boot = 200
  return c
