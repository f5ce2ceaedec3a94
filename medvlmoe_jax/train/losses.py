"""Classification losses in float32; unknown labels are masked out."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits, labels, label_mask, task: str) -> jax.Array:
  """Mean loss over the known labels (multilabel) or over the examples (softmax tasks)."""
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  if task == "multilabel":
    weight = label_mask.astype(jnp.float32)
    per_label = optax.sigmoid_binary_cross_entropy(logits, labels)
    return jnp.sum(per_label * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  if task in ("multiclass", "ordinal"):
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))
  raise ValueError(f"unknown task {task!r}")


def probabilities(logits, task: str) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if task == "multilabel" else jax.nn.softmax(logits, axis=-1)
