"""Analytic model FLOPs of MedVLMoE, from the config: the numerator of an honest MFU.

XLA's `cost_analysis()` is no model count: it counts `jax.lax.ragged_dot` as if every row met
every expert, a `lax.switch` at its largest branch (the dropless slot dispatch), a loop body
once (`cpu_kernel`, `lax.map` attention chunks), every empty slot of a capacity buffer, the
forward work that `model.remat` recomputes, the optimizer and the elementwise work. Here:

- matmuls only (dense layers, the patch convolution, attention scores q k^T and the
  weighted sum p v), a multiply-add counted as 2 FLOPs; no elementwise work (norms,
  softmax, activations, bias adds), no embedding lookups (gathers);
- exactly the shapes the model code computes: ViT over patches + CLS, BioGPT over all
  `data.text_max_len` positions (attention covers padding and the causal upper triangle,
  masked but computed), the stream projections over every token, each fusion block's two
  cross-attentions, the gate, the MoE at `model.moe.granularity` (router on every row, then
  top_k expert MLPs per routed row, not num_experts: dropped assignments are counted, as
  the model means to compute them), the classifier;
- a training step is 3 x the forward (the backward costs two forwards: gradients with
  respect to activations and to weights; the usual convention, e.g. PaLM's MFU), with no
  remat recomputation and no optimizer.
"""

from __future__ import annotations

import ml_collections

BACKWARD_FACTOR = 2   # train step = (1 + BACKWARD_FACTOR) x forward


def linear(rows: float, d_in: int, d_out: int) -> float:
  return 2.0 * rows * d_in * d_out


def attention(q_len: float, kv_len: float, width: int) -> dict[str, float]:
  """Per example: q/out projections on the queries, k/v on the keys, scores q k^T and the
  weighted sum p v over every (query, key) pair (all heads together span `width`)."""
  return {"projections": 2 * linear(q_len, width, width) + 2 * linear(kv_len, width, width),
          "scores": 2.0 * q_len * kv_len * width, "weighted_sum": 2.0 * q_len * kv_len * width}


def vision_tokens(vision: ml_collections.ConfigDict) -> int:
  return (vision.image_size // vision.patch_size) ** 2 + 1     # patches + CLS


def vit(vision: ml_collections.ConfigDict) -> dict[str, float]:
  """Per example, CLIP ViT: patch convolution (no bias, patches only), then per layer
  self-attention and the MLP over patches + CLS."""
  tokens, d = vision_tokens(vision), vision.width
  att = attention(tokens, tokens, d)
  return {"patch": linear(tokens - 1, vision.channels * vision.patch_size ** 2, d),
          "attention_projections": vision.layers * att["projections"],
          "attention_scores": vision.layers * (att["scores"] + att["weighted_sum"]),
          "mlp": vision.layers * 2 * linear(tokens, d, vision.mlp_dim)}


def biogpt(text: ml_collections.ConfigDict, seq: int) -> dict[str, float]:
  """Per example, BioGPT decoder layers over `seq` positions (no LM head: the model takes
  hidden states)."""
  d = text.width
  att = attention(seq, seq, d)
  return {"attention_projections": text.layers * att["projections"],
          "attention_scores": text.layers * (att["scores"] + att["weighted_sum"]),
          "mlp": text.layers * 2 * linear(seq, d, text.ffn_dim)}


def expert_mlp(width: int, hidden: int) -> float:
  """One row through one expert (or the dense FFN's per-row cost at hidden width)."""
  return 2 * linear(1, width, hidden)


def forward_flops(config: ml_collections.ConfigDict, *, batch: int | None = None,
                  text_tokens: float | None = None) -> dict[str, float]:
  """Forward FLOPs of one batch (`data.batch_size`, or `batch`) per component.

  `text_tokens`: mean non-padding tokens per caption, which only the token-granularity MoE
  depends on (it routes real text tokens only); default `data.text_max_len`, an upper bound.
  """
  m = config.model
  b = config.data.batch_size if batch is None else batch
  seq = config.data.text_max_len
  lv = vision_tokens(m.vision)
  out = {"vision": b * sum(vit(m.vision).values())}
  if m.vision_only:
    out["classifier"] = linear(b, m.vision.width, m.num_classes)
    return out
  use_text = m.text.enabled
  use_fusion = m.fusion.enabled and use_text
  d = m.fusion.dim
  out["projection"] = linear(b * lv, m.vision.width, d)
  if use_text:
    out["text"] = b * sum(biogpt(m.text, seq).values())
    out["projection"] += linear(b * seq, m.text.width, d)
  if use_fusion:
    both_ways = [attention(lv, seq, d), attention(seq, lv, d)]
    out["fusion"] = b * m.fusion.layers * sum(sum(a.values()) for a in both_ways)
  if use_text and m.fusion.gate != "none":
    out["gate"] = linear(b, 2 * d, 2 if m.fusion.gate == "modality" else 2 * d)

  head_width = d * (2 if use_text else 1)
  moe = m.moe
  if moe.granularity == "token":
    width, rows = d, b * (lv + (seq if use_text else 0))
    routed = b * (lv + ((seq if text_tokens is None else text_tokens) if use_text else 0))
  else:
    width, rows, routed = head_width, b, b
  if moe.enabled:
    out["moe_router"] = linear(rows, width, moe.num_experts)
    out["moe_experts"] = routed * moe.top_k * expert_mlp(width, moe.hidden)
  else:   # one FFN as wide as the top_k active experts, on every row
    out["dense_ffn"] = rows * expert_mlp(width, moe.top_k * moe.hidden)
  out["classifier"] = linear(b, head_width, m.num_classes)
  return out


def train_step_flops(config: ml_collections.ConfigDict, *, batch: int | None = None,
                     text_tokens: float | None = None) -> float:
  """Model FLOPs of one training step: 3 x the forward (module docstring)."""
  forward = forward_flops(config, batch=batch, text_tokens=text_tokens)
  return (1 + BACKWARD_FACTOR) * sum(forward.values())
