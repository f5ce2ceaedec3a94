"""Classification losses in float32; unknown labels are masked out."""

from __future__ import annotations

import itertools

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


def heads_loss(logits, labels, label_mask, dataset, heads, valid=None) -> jax.Array:
  """Each example's loss from its own dataset's head, for a model with one head per dataset.

  `heads`: ((task, num_classes), ...) in head order; `logits` (B, sum of num_classes) are
  the heads' logits side by side; `labels` / `label_mask` (B, max num_classes) are padded
  (mask False); `dataset` (B,) is each row's head. Head h's loss is `classification_loss`'s
  on its own rows only, and the heads are weighted by their rows' share of the batch, so an
  example counts once, whichever dataset it comes from.
  """
  logits, labels = logits.astype(jnp.float32), labels.astype(jnp.float32)
  rows_all = jnp.ones(dataset.shape, bool) if valid is None else valid.astype(bool)
  total, offset, count = jnp.zeros((), jnp.float32), 0, jnp.zeros((), jnp.float32)
  for h, (task, num_classes) in enumerate(heads):
    rows = (dataset == h) & rows_all
    z, y = logits[:, offset:offset + num_classes], labels[:, :num_classes]
    offset += num_classes
    n = jnp.sum(rows.astype(jnp.float32))
    if task == "multilabel":
      weight = (label_mask[:, :num_classes] & rows[:, None]).astype(jnp.float32)
      per_label = optax.sigmoid_binary_cross_entropy(z, y)
      loss = jnp.sum(per_label * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    elif task in ("multiclass", "ordinal"):
      per_row = optax.softmax_cross_entropy(z, y)
      loss = jnp.sum(per_row * rows) / jnp.maximum(n, 1.0)
    else:
      raise ValueError(f"unknown task {task!r}")
    total, count = total + loss * n, count + n
  if offset != logits.shape[-1]:
    raise ValueError(f"heads {heads} give {offset} logits, the model {logits.shape[-1]}")
  return total / jnp.maximum(count, 1.0)


def loss(logits, batch, task) -> jax.Array:
  """`task`: one task name, or the heads ((task, num_classes), ...) of a mixture, whose rows
  say their head in batch['dataset']."""
  if isinstance(task, str):
    return classification_loss(logits, batch["labels"], batch["label_mask"], task)
  return heads_loss(logits, batch["labels"], batch["label_mask"], batch["dataset"], task,
                    batch.get("valid"))


def probabilities(logits, task) -> jax.Array:
  """Per head for a mixture's heads: sigmoid or a softmax within each head's own logits."""
  logits = logits.astype(jnp.float32)
  if not isinstance(task, str):
    bounds = [0] + list(itertools.accumulate(c for _, c in task))
    return jnp.concatenate([probabilities(logits[:, a:b], t)
                            for (t, _), a, b in zip(task, bounds, bounds[1:])], axis=-1)
  return jax.nn.sigmoid(logits) if task == "multilabel" else jax.nn.softmax(logits, axis=-1)
