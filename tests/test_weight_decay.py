"""Weight decay is opt-in by rule: exactly the kernels of linear layers (the patch conv, the
experts and the router included) and the token embedding are decayed; position tables,
norms, biases, the class token and the modality vectors never are."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.models.medvlmoe import MedVLMoE
from medvlmoe_jax.train import optimizer as optim_lib
from medvlmoe_jax.tree import flat_paths

# Paths with layer indices written as N; the same for the tiny and the full model.
DECAYED = sorted("""
classifier/kernel
fusion/N/text_from_vision/k_proj/kernel
fusion/N/text_from_vision/out_proj/kernel
fusion/N/text_from_vision/q_proj/kernel
fusion/N/text_from_vision/v_proj/kernel
fusion/N/vision_from_text/k_proj/kernel
fusion/N/vision_from_text/out_proj/kernel
fusion/N/vision_from_text/q_proj/kernel
fusion/N/vision_from_text/v_proj/kernel
gate/proj/kernel
moe/router
moe/w1
moe/w2
text/embed_tokens
text/layers/N/mlp/fc1/kernel
text/layers/N/mlp/fc2/kernel
text/layers/N/self_attn/k_proj/kernel
text/layers/N/self_attn/out_proj/kernel
text/layers/N/self_attn/q_proj/kernel
text/layers/N/self_attn/v_proj/kernel
text_proj/proj/kernel
vision/layers/N/mlp/fc1/kernel
vision/layers/N/mlp/fc2/kernel
vision/layers/N/self_attn/k_proj/kernel
vision/layers/N/self_attn/out_proj/kernel
vision/layers/N/self_attn/q_proj/kernel
vision/layers/N/self_attn/v_proj/kernel
vision/patch_embedding/kernel
vision_proj/proj/kernel
""".split())

NOT_DECAYED = sorted("""
classifier/bias
fusion/N/text_from_vision/k_proj/bias
fusion/N/text_from_vision/out_proj/bias
fusion/N/text_from_vision/q_proj/bias
fusion/N/text_from_vision/v_proj/bias
fusion/N/text_norm/bias
fusion/N/text_norm/scale
fusion/N/vision_from_text/k_proj/bias
fusion/N/vision_from_text/out_proj/bias
fusion/N/vision_from_text/q_proj/bias
fusion/N/vision_from_text/v_proj/bias
fusion/N/vision_norm/bias
fusion/N/vision_norm/scale
gate/proj/bias
moe/b1
moe/b2
moe_norm/bias
moe_norm/scale
text/embed_positions
text/layer_norm/bias
text/layer_norm/scale
text/layers/N/final_layer_norm/bias
text/layers/N/final_layer_norm/scale
text/layers/N/mlp/fc1/bias
text/layers/N/mlp/fc2/bias
text/layers/N/self_attn/k_proj/bias
text/layers/N/self_attn/out_proj/bias
text/layers/N/self_attn/q_proj/bias
text/layers/N/self_attn/v_proj/bias
text/layers/N/self_attn_layer_norm/bias
text/layers/N/self_attn_layer_norm/scale
text_proj/modality_type
text_proj/position
text_proj/proj/bias
vision/class_embedding
vision/layers/N/layer_norm1/bias
vision/layers/N/layer_norm1/scale
vision/layers/N/layer_norm2/bias
vision/layers/N/layer_norm2/scale
vision/layers/N/mlp/fc1/bias
vision/layers/N/mlp/fc2/bias
vision/layers/N/self_attn/k_proj/bias
vision/layers/N/self_attn/out_proj/bias
vision/layers/N/self_attn/q_proj/bias
vision/layers/N/self_attn/v_proj/bias
vision/position_embedding
vision/post_layernorm/bias
vision/post_layernorm/scale
vision/pre_layrnorm/bias
vision/pre_layrnorm/scale
vision_proj/modality_type
vision_proj/position
vision_proj/proj/bias
""".split())


def _model_config(size: str):
  c = config_lib.defaults()
  if size == "tiny":
    config_lib.apply_size(c, "tiny", "tiny", "tiny")
  return c.model


@pytest.mark.parametrize("size,layers", [("tiny", 2), ("full", 24)])
def test_decayed_parameter_paths(size, layers):
  cfg = _model_config(size)
  params = nnx.state(nnx.eval_shape(lambda: MedVLMoE(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  mults = flat_paths(optim_lib.decay_multipliers(params, config_lib.defaults().optim.wd_mults))
  template = lambda path: re.sub(r"/\d+/", "/N/", path)
  decayed = sorted({template(p) for p, m in mults.items() if m})
  undecayed = sorted({template(p) for p, m in mults.items() if not m})
  assert decayed == DECAYED
  assert undecayed == NOT_DECAYED
  # Every layer of every stream is covered, not only a template of it.
  per_layer = [p for p in DECAYED if p.startswith(("vision/layers", "text/layers"))]
  assert sum(1 for p, m in mults.items() if m) == len(DECAYED) - len(per_layer) + layers * len(per_layer)


def test_undecayed_parameters_do_not_shrink():
  """With zero gradients AdamW moves only the decayed parameters."""
  cfg = _model_config("tiny")
  params = nnx.state(MedVLMoE(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  optim = config_lib.defaults().optim
  optim.weight_decay = 0.5
  scheds = {name: optax.constant_schedule(0.1) for name, _ in optim.groups}
  tx = optim_lib.make_optimizer(optim, params, scheds)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  moved = {p: bool(np.any(np.asarray(u) != 0)) for p, u in flat_paths(updates).items()}
  assert not moved["vision/position_embedding"] and not moved["text/embed_positions"]
  assert not moved["vision/class_embedding"] and not moved["moe_norm/scale"]
  assert moved["vision/patch_embedding/kernel"] and moved["text/embed_tokens"] and moved["moe/w1"]
