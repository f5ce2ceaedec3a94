"""HF CLIP vision tower (CLIPVisionModel or the vision half of CLIPModel) -> our ViT."""

from __future__ import annotations

import ml_collections

from medvlmoe_jax.convert.mapping import ConversionError

_L = r"encoder\.layers\.(\d+)\."
RULES = [
    (r"embeddings\.class_embedding", "class_embedding", "copy"),
    (r"embeddings\.patch_embedding\.weight", "patch_embedding/kernel", "conv"),
    (r"embeddings\.position_embedding\.weight", "position_embedding", "copy"),
    (r"(pre_layrnorm|post_layernorm)\.weight", r"\1/scale", "copy"),
    (r"(pre_layrnorm|post_layernorm)\.bias", r"\1/bias", "copy"),
    (_L + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.weight", r"layers/\1/self_attn/\2/kernel", "linear"),
    (_L + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.bias", r"layers/\1/self_attn/\2/bias", "copy"),
    (_L + r"(layer_norm1|layer_norm2)\.weight", r"layers/\1/\2/scale", "copy"),
    (_L + r"(layer_norm1|layer_norm2)\.bias", r"layers/\1/\2/bias", "copy"),
    (_L + r"mlp\.(fc1|fc2)\.weight", r"layers/\1/mlp/\2/kernel", "linear"),
    (_L + r"mlp\.(fc1|fc2)\.bias", r"layers/\1/mlp/\2/bias", "copy"),
]
# Buffers, and the text half of a full CLIPModel.
IGNORE = (r"embeddings\.position_ids", r"text_model\..*", r"visual_projection\..*",
          r"text_projection\..*", r"logit_scale")


def vision_config(hf: dict) -> ml_collections.ConfigDict:
  """Our `model.vision` fields from a CLIPVisionConfig or CLIPConfig dict."""
  if hf.get("model_type") == "clip":
    hf = hf["vision_config"]
  elif hf.get("model_type") != "clip_vision_model":
    raise ConversionError(f"vision source has model_type {hf.get('model_type')!r}; expected a "
                          "CLIPVisionModel or CLIPModel checkpoint")
  act = hf.get("hidden_act", "quick_gelu")
  if act != "quick_gelu":
    raise ConversionError(f"vision hidden_act {act!r} is not supported (CLIP uses quick_gelu)")
  return ml_collections.ConfigDict(dict(
      width=hf["hidden_size"], layers=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
      mlp_dim=hf["intermediate_size"], patch_size=hf["patch_size"], image_size=hf["image_size"],
      channels=hf.get("num_channels", 3), layer_norm_eps=hf.get("layer_norm_eps", 1e-5)))




def normalise_keys(state: dict) -> dict:
  """Strip the `vision_model.` prefix (CLIPModel, and CLIPVisionModel saved by transformers 4);
  transformers 5 saves a CLIPVisionModel without it."""
  return {k[len("vision_model."):] if k.startswith("vision_model.") else k: v
          for k, v in state.items()}
