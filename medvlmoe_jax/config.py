"""Default configuration, size presets and validation.

Every config file starts from `defaults()` and changes values; `validate()` rejects keys
that the defaults don't know (a typo must not silently train the wrong model).
"""

from __future__ import annotations

import difflib

import ml_collections
from ml_collections import config_dict

from medvlmoe_jax.cli import BadInputError

VISION_PRESETS = {
    # openai/clip-vit-large-patch14 vision tower.
    "vit_l14": dict(width=1024, layers=24, heads=16, mlp_dim=4096, patch_size=14, image_size=224),
    "tiny": dict(width=64, layers=2, heads=4, mlp_dim=128, patch_size=8, image_size=32),
}
TEXT_PRESETS = {
    # microsoft/biogpt.
    "biogpt": dict(width=1024, layers=24, heads=16, ffn_dim=4096, vocab_size=42384,
                   max_positions=1024),
    "tiny": dict(width=64, layers=2, heads=4, ffn_dim=128, vocab_size=256, max_positions=64),
}
HEAD_PRESETS = {
    "full": dict(dim=512, heads=8, moe_hidden=2048),
    "tiny": dict(dim=64, heads=4, moe_hidden=128),
}


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- data ---------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"            # synthetic (made in memory) | tfds (a data_prep/ build)
  c.data.path = config_dict.placeholder(str)
  c.data.task = "multilabel"           # multilabel | multiclass | ordinal
  c.data.image_size = 224
  c.data.text_max_len = 32
  c.data.tokenizer = "word"            # word (no download) | biogpt
  c.data.tokenizer_path = config_dict.placeholder(str)
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.data.worker_count = 0              # Grain worker processes decoding/augmenting batches
  # One model on several datasets: ({"path": DIR} or {"synthetic": {overrides}}, with
  # optional "name", "weight" (sampling, default 1) and "modality" (default: the dataset's
  # name; datasets of one modality share its id)), in place of data.name / data.path; each
  # gets its own classifier head (model.heads, set from the data).
  c.data.mixture = ()
  # Train-time augmentation; no horizontal flips by default (laterality matters in CXR).
  c.data.augment = ml_collections.ConfigDict(dict(
      enabled=False, translate=0.05, brightness=0.1, contrast=0.1, hflip=False))
  # modality: 0 (the demo's) or 1 (a second modality); describe: the text names the findings.
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=2048, num_val=512, num_test=512, num_classes=6, seed=1234, modality=0,
      describe=False))

  # --- model --------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.dtype = "bfloat16"           # compute dtype; params stay float32
  c.model.num_classes = 14
  c.model.vision_only = False
  c.model.init_from = config_dict.placeholder(str)
  # Rematerialisation of each encoder layer (REMAT_POLICIES below): 'none',
  # 'full' (keep only layer inputs) or a jax.checkpoint_policies name. The default keeps the
  # matmul outputs and recomputes attention and elementwise work: XLA's peak for the bf16
  # step at batch 32 falls from 44 to 14 GB for 1.4% more FLOPs (benchmark/memory.py).
  c.model.remat = "dots_with_no_batch_dims_saveable"
  c.model.vision = ml_collections.ConfigDict(dict(
      VISION_PRESETS["vit_l14"], channels=3, layer_norm_eps=1e-5))
  # Hidden states of these layers (1-based, e.g. (8, 16, 24) for ViT-L/14) enter the fusion
  # as visual tokens, each depth with its own projection and learned scale vector; () = the
  # last layer only.
  c.model.vision.feature_layers = ()
  c.model.text = ml_collections.ConfigDict(dict(
      TEXT_PRESETS["biogpt"], enabled=True, scale_embedding=True, layer_norm_eps=1e-5))
  c.model.fusion = ml_collections.ConfigDict(dict(
      enabled=True, dim=512, heads=8, layers=1, gate="modality", max_text_len=64))
  c.model.moe = ml_collections.ConfigDict(dict(
      enabled=True, num_experts=8, top_k=2, hidden=2048, residual=True, granularity="sample",
      alpha=0.01))
  c.model.moe.capacity_factor = config_dict.placeholder(float)   # None = dropless
  # Dispatch implementation (moe/dispatch.py): auto | blocks | ragged_dot | slots | cpu_kernel.
  c.model.moe.dispatch = "auto"
  # Added to the router's input: none (the paper's router) | modality (a learned embedding of
  # the example's modality, of model.num_modalities) | text (the pooled clinical text).
  c.model.moe.router_context = "none"
  c.model.num_modalities = 1
  # One classifier per dataset of a mixture (their class counts); () = one of num_classes.
  c.model.heads = ()
  # Pooled image / text projections and a learned temperature, for train.align_weight.
  c.model.align = False

  # --- devices (docs/design.md §3) ----------------------------------------------------
  # -1: expert = the largest device count dividing the experts, data = the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, expert=-1))

  # --- optimisation -------------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  # (group, regex on the parameter path); the first match wins.
  c.optim.groups = (("encoder", r"^(vision|text)/"), ("head", r".*"))
  c.optim.lr = ml_collections.ConfigDict(dict(encoder=3e-5, head=1e-4))
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.1
  # Weight decay is opt-in by rule (big_vision's wd_mults): (regex on the parameter path,
  # multiplier of weight_decay); the first match wins and a parameter no rule matches is not
  # decayed. Decayed: the kernels of linear (and the patch conv) layers, the experts' and the
  # router's kernels, the token embedding. Not: biases, norms, position tables, class token.
  c.optim.wd_mults = ((r"/kernel$", 1.0), (r"^moe/(w1|w2|router)$", 1.0),
                      (r"^text/embed_tokens$", 1.0))
  c.optim.grad_clip = 1.0
  c.optim.loss_scale = ml_collections.ConfigDict(dict(initial=2.0**15, growth_interval=2000))

  # --- training loop ------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.epochs = 100
  c.train.warmup_epochs = 10
  c.train.max_steps = config_dict.placeholder(int)   # stop early (tests, smoke runs)
  c.train.eval_every_epochs = 1.0
  c.train.log_every_steps = 50
  c.train.patience = 15                # evaluations without a better val mean AUC
  c.train.keep_checkpoints = 2         # latest ones kept, besides the best
  # Weight of the CLIP-style image-text InfoNCE over the global batch (needs model.align).
  c.train.align_weight = 0.0

  c.eval = ml_collections.ConfigDict(dict(n_boot=1000, seed=0))
  return c


def apply_size(config: ml_collections.ConfigDict, vision: str, text: str, head: str) -> None:
  """Set the encoder and head sizes from the presets above."""
  config.model.vision.update(VISION_PRESETS[vision])
  config.model.text.update(TEXT_PRESETS[text])
  h = HEAD_PRESETS[head]
  config.model.fusion.dim, config.model.fusion.heads = h["dim"], h["heads"]
  config.model.moe.hidden = h["moe_hidden"]


def paper_recipe(config: ml_collections.ConfigDict, name: str, num_classes: int, task: str,
                 image_size: int = 224) -> ml_collections.ConfigDict:
  """The paper's training recipe on a data_prep output directory (docs/design.md §2, §4):
  ViT-L/14 + BioGPT from converted weights, d=512, K=8, Top-2, alpha 0.01, AdamW 3e-5 / 1e-4,
  weight decay 0.1, 100 epochs with 10 of warmup, batch 32, patience 15, bf16 compute.
  Every path is a key: --config.data.path, --config.model.init_from, --config.data.tokenizer_path.
  """
  c = config
  c.data.name = "tfds"
  c.data.path = f"data/{name}"
  c.data.task = task
  c.data.image_size = image_size
  c.data.text_max_len = 64
  c.data.tokenizer = "biogpt"
  c.data.tokenizer_path = "converted/clip_biogpt"
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.data.worker_count = 4
  c.data.augment.enabled = True
  c.model.num_classes = num_classes
  c.model.init_from = "converted/clip_biogpt"
  c.model.dtype = "bfloat16"
  c.model.vision.image_size = image_size
  c.optim.lr.encoder, c.optim.lr.head = 3e-5, 1e-4
  c.optim.weight_decay = 0.1
  c.train.epochs, c.train.warmup_epochs, c.train.patience = 100, 10, 15
  return c


def small_from_scratch(config: ml_collections.ConfigDict, image_size: int) -> None:
  """Tiny encoders trained from scratch at low resolution, the full fusion + MoE head; no
  converted weights or BioGPT tokenizer needed (CPU-sized runs)."""
  apply_size(config, "tiny", "tiny", "tiny")
  config.model.init_from = None
  config.data.tokenizer = "word"
  config.data.tokenizer_path = None
  config.data.image_size = config.model.vision.image_size = image_size
  config.model.vision.patch_size = 7 if image_size % 7 == 0 else 8
  config.data.text_max_len = 24
  config.model.fusion.max_text_len = 32
  config.model.dtype = "float32"
  config.data.worker_count = 0
  config.optim.lr.encoder = config.optim.lr.head = 1e-3
  config.optim.weight_decay = 0.01
  config.train.epochs, config.train.warmup_epochs, config.train.patience = 30, 2, 10
  config.train.log_every_steps = 10


def dataset_recipe(name: str, num_classes: int, task: str, arg: str | None = None,
                   small_image_size: int = 64) -> ml_collections.ConfigDict:
  """A dataset config file's `get_config(arg)`: the paper's recipe, or with arg 'small'
  (`--config configs/NAME.py:small`) tiny encoders from scratch at `small_image_size`."""
  c = paper_recipe(defaults(), name, num_classes=num_classes, task=task)
  if arg == "small":
    small_from_scratch(c, image_size=small_image_size)
  elif arg is not None:
    raise ValueError(f"unknown config argument {arg!r} (known: small)")
  return c


def _flat_keys(c: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  keys = set()
  for k, v in c.items():
    keys.add(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys |= _flat_keys(v, prefix + k + ".")
  return keys


# model.remat: 'none', 'full' (keep only each layer's input) or a jax.checkpoint_policies name.
REMAT_POLICIES = ("none", "full", "nothing_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots",
                  "checkpoint_dots_with_no_batch_dims", "everything_saveable")


class ConfigError(BadInputError):
  """A config key or value that cannot be used: bad input, one line from every script."""


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise ConfigError naming every key the defaults don't have, with near matches."""
  known = _flat_keys(defaults())
  unknown = sorted(_flat_keys(config) - known)
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, known, n=1)
      hints.append(f"  {key}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError("unknown config key(s):\n" + "\n".join(hints))
  m = config.model
  checks = [
      (m.fusion.gate in ("modality", "feature", "none"), f"model.fusion.gate={m.fusion.gate!r}"),
      (m.moe.granularity in ("sample", "token"), f"model.moe.granularity={m.moe.granularity!r}"),
      (config.data.task in ("multilabel", "multiclass", "ordinal"), f"data.task={config.data.task!r}"),
      (m.dtype in ("float32", "bfloat16", "float16"), f"model.dtype={m.dtype!r}"),
      (m.moe.capacity_factor is None or m.moe.capacity_factor > 0,
       f"model.moe.capacity_factor={m.moe.capacity_factor!r} must be > 0 or None"),
      (m.moe.dispatch in ("auto", "blocks", "ragged_dot", "slots", "cpu_kernel"),
       f"model.moe.dispatch={m.moe.dispatch!r}"),
      (m.remat in REMAT_POLICIES, f"model.remat={m.remat!r} is not one of {REMAT_POLICIES}"),
      (m.moe.router_context in ("none", "modality", "text"),
       f"model.moe.router_context={m.moe.router_context!r} is not none, modality or text"),
      (m.moe.router_context == "none" or m.moe.enabled,
       "model.moe.router_context needs the MoE (model.moe.enabled)"),
      (m.moe.router_context != "text" or (m.text.enabled and not m.vision_only),
       "model.moe.router_context='text' needs the text stream (model.text.enabled)"),
      (all(1 <= l <= m.vision.layers for l in m.vision.feature_layers)
       and len(set(m.vision.feature_layers)) == len(m.vision.feature_layers),
       f"model.vision.feature_layers={tuple(m.vision.feature_layers)}: distinct layers in "
       f"1..{m.vision.layers}"),
      (config.train.align_weight == 0 or m.align,
       f"train.align_weight={config.train.align_weight} needs model.align=True"),
      (not m.align or (m.text.enabled and not m.vision_only),
       "model.align needs the text stream (model.text.enabled)"),
      (config.data.image_size == m.vision.image_size,
       f"data.image_size={config.data.image_size} != model.vision.image_size={m.vision.image_size}"),
      (config.data.text_max_len <= m.fusion.max_text_len,
       f"data.text_max_len={config.data.text_max_len} > model.fusion.max_text_len={m.fusion.max_text_len}"),
  ]
  bad = [msg for ok, msg in checks if not ok]
  if bad:
    raise ConfigError("invalid config value(s):\n  " + "\n  ".join(bad))
