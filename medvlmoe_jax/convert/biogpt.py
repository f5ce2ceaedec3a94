"""HF BioGptModel / BioGptForCausalLM -> our BioGPT text stream."""

from __future__ import annotations

import ml_collections

from medvlmoe_jax.convert.mapping import ConversionError

_L = r"layers\.(\d+)\."
RULES = [
    (r"embed_tokens\.weight", "embed_tokens", "copy"),
    (r"embed_positions\.weight", "embed_positions", "copy"),
    (r"layer_norm\.weight", "layer_norm/scale", "copy"),
    (r"layer_norm\.bias", "layer_norm/bias", "copy"),
    (_L + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.weight", r"layers/\1/self_attn/\2/kernel", "linear"),
    (_L + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.bias", r"layers/\1/self_attn/\2/bias", "copy"),
    (_L + r"(self_attn_layer_norm|final_layer_norm)\.weight", r"layers/\1/\2/scale", "copy"),
    (_L + r"(self_attn_layer_norm|final_layer_norm)\.bias", r"layers/\1/\2/bias", "copy"),
    (_L + r"(fc1|fc2)\.weight", r"layers/\1/mlp/\2/kernel", "linear"),
    (_L + r"(fc1|fc2)\.bias", r"layers/\1/mlp/\2/bias", "copy"),
]
# The causal-LM head is tied to embed_tokens.
IGNORE = (r"output_projection\.weight",)


def normalise_keys(state: dict) -> dict:
  """BioGptForCausalLM nests the model under `biogpt.`; strip it."""
  return {k[len("biogpt."):] if k.startswith("biogpt.") else k: v for k, v in state.items()}


def text_config(hf: dict) -> ml_collections.ConfigDict:
  if hf.get("model_type") != "biogpt":
    raise ConversionError(f"text source has model_type {hf.get('model_type')!r}; expected biogpt")
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise ConversionError(f"text hidden_act {act!r} is not supported (BioGPT uses gelu)")
  return ml_collections.ConfigDict(dict(
      width=hf["hidden_size"], layers=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
      ffn_dim=hf["intermediate_size"], vocab_size=hf["vocab_size"],
      max_positions=hf["max_position_embeddings"], scale_embedding=hf.get("scale_embedding", True),
      layer_norm_eps=1e-5))  # the torch modules use nn.LayerNorm's default, not the config's
