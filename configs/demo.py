"""The embedded default: a synthetic multi-label task and the tiny model, ~1-2 min on a CPU.

Labels are visible in the image (a bright square per finding) and, for the last two
findings, mostly in the clinical sentence; see medvlmoe_jax/data/synthetic.py. The word
tokenizer needs no download.
"""

from medvlmoe_jax import config as config_lib


def get_config():
  c = config_lib.defaults()
  config_lib.apply_size(c, vision="tiny", text="tiny", head="tiny")
  c.data.name = "synthetic"
  c.data.tokenizer = "word"
  c.data.image_size = 32
  c.data.text_max_len = 24
  c.data.batch_size = 64
  c.data.eval_batch_size = 256
  c.model.num_classes = c.data.synthetic.num_classes
  c.model.dtype = "float32"          # bf16 is emulated (slowly) on CPUs
  c.model.fusion.max_text_len = 32
  c.optim.lr.encoder = 1e-3          # from scratch: the encoders are not pre-trained here
  c.optim.lr.head = 1e-3
  c.optim.weight_decay = 0.01
  c.train.epochs = 24
  c.train.warmup_epochs = 1
  c.train.log_every_steps = 16
  c.train.patience = 8
  c.eval.n_boot = 500
  return c
