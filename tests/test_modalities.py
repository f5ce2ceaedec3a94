"""One model across modalities (docs/design.md §2): modality- and text-conditioned routing,
multi-scale visual tokens, one head per dataset, the image-text alignment embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.models.medvlmoe import LOG_SCALE_INIT, build_model
from medvlmoe_jax.train import losses
from test_models import inputs, tiny_model_config


def _routing(model, modality):
  image, ids, mask = inputs()
  _, aux = model(image, ids, mask, modality=jnp.asarray(modality, jnp.int32))
  return np.asarray(aux["expert_index"]), np.asarray(aux["expert_weights"])


@pytest.mark.parametrize("granularity", ["sample", "token"])
def test_modality_conditioned_router_routes_differently(granularity):
  """Only the modality changes: the routing changes (weights always; the chosen experts once
  the embedding is as large as a trained one can be), and without the context it does not."""
  cfg = tiny_model_config(**{"moe.router_context": "modality", "moe.granularity": granularity})
  cfg.num_modalities = 2
  model = build_model(cfg)
  index0, weights0 = _routing(model, [0, 0, 0])
  index1, weights1 = _routing(model, [1, 1, 1])
  assert not np.allclose(weights0, weights1)
  # An embedding along the router's columns 2m and 2m + 1 sends modality m to those experts.
  kernel = np.asarray(model.moe.router[...])          # (w, K)
  table = np.stack([kernel[:, 2 * m] + kernel[:, 2 * m + 1] for m in range(2)])
  table = 50 * table / np.sum(table ** 2, axis=1, keepdims=True)
  model.modality_embedding[...] = jnp.asarray(table, jnp.float32)
  index0, _ = _routing(model, [0, 0, 0])
  index1, _ = _routing(model, [1, 1, 1])
  assert set(np.unique(index0)) == {0, 1} and set(np.unique(index1)) == {2, 3}
  mixed, _ = _routing(model, [0, 1, 0])
  per_example = mixed.reshape(3, -1, 2)
  assert set(np.unique(per_example[1])) == {2, 3} and set(np.unique(per_example[0])) == {0, 1}

  plain = build_model(tiny_model_config(**{"moe.granularity": granularity}))
  np.testing.assert_array_equal(_routing(plain, [0, 0, 0])[1], _routing(plain, [1, 1, 1])[1])


def test_text_conditioned_router_reads_the_text():
  model = build_model(tiny_model_config(**{"moe.router_context": "text"}))
  image, ids, mask = inputs()
  _, aux = model(image, ids, mask)
  _, aux_other = model(image, (ids + 1) % 200, mask)
  assert not np.allclose(aux["expert_weights"], aux_other["expert_weights"])


def test_vision_returns_the_requested_layers():
  model = build_model(tiny_model_config())
  image, _, _ = inputs()
  last = np.asarray(model.vision(image))
  first, second = model.vision(image, (1, 2))
  np.testing.assert_array_equal(np.asarray(second), last)
  assert not np.allclose(first, second)
  swapped = model.vision(image, (2, 1))
  np.testing.assert_array_equal(np.asarray(swapped[0]), last)


def test_multi_scale_tokens_and_the_expert_load_per_scale():
  model = build_model(tiny_model_config(**{"vision.feature_layers": (1, 2),
                                           "moe.granularity": "token"}))
  image, ids, mask = inputs()
  tokens, pooled = model._visual_tokens(image)
  assert tokens.shape[1] == 2 * model.num_tokens and pooled == model.num_tokens
  logits, aux = model(image, ids, mask)
  assert logits.shape == (3, 5) and np.all(np.isfinite(logits))
  share = np.asarray(aux["expert_share_by_scale"])
  assert share.shape == (2, 8)
  np.testing.assert_allclose(share.sum(1), 1.0, rtol=1e-6)


def test_bad_feature_layers_are_refused():
  config = config_lib.defaults()
  config_lib.apply_size(config, "tiny", "tiny", "tiny")
  config.model.vision.feature_layers = (0, 2)
  with pytest.raises(config_lib.ConfigError, match="feature_layers"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="feature_layers"):
    build_model(tiny_model_config(**{"vision.feature_layers": (2, 2)}))


def test_one_head_per_dataset():
  cfg = tiny_model_config()
  cfg.heads = (3, 2)
  model = build_model(cfg)
  image, ids, mask = inputs()
  logits, _ = model(image, ids, mask)
  assert logits.shape == (3, 5)
  head1 = model.classifier[1]
  head1.kernel[...] = head1.kernel[...] + 1.0
  changed, _ = model(image, ids, mask)
  np.testing.assert_array_equal(np.asarray(changed[:, :3]), np.asarray(logits[:, :3]))
  assert not np.allclose(changed[:, 3:], logits[:, 3:])


def _naive_heads_loss(logits, labels, label_mask, dataset, heads):
  """Per example: its own head's slice and task, then the mean as classification_loss has it
  (per known label for multilabel heads, per example for softmax heads), rows weighting heads."""
  offsets = np.cumsum([0] + [c for _, c in heads])
  total, count = 0.0, 0
  for h, (task, c) in enumerate(heads):
    rows = np.nonzero(dataset == h)[0]
    if not len(rows):
      continue
    z = logits[rows, offsets[h]:offsets[h] + c]
    loss = losses.classification_loss(z, labels[rows, :c], label_mask[rows, :c], task)
    total, count = total + float(loss) * len(rows), count + len(rows)
  return total / count


def test_each_example_uses_its_own_datasets_head():
  heads = (("multilabel", 4), ("multiclass", 3), ("ordinal", 2))
  rng = np.random.default_rng(0)
  n = 12
  dataset = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 2, 0])
  logits = rng.normal(size=(n, 9)).astype(np.float32)
  labels = np.zeros((n, 4), np.float32)
  mask = np.zeros((n, 4), bool)
  for i, d in enumerate(dataset):
    task, c = heads[d]
    labels[i, :c] = rng.integers(0, 2, c) if task == "multilabel" else np.eye(c)[rng.integers(c)]
    mask[i, :c] = True
  mask[0, 1] = False                     # an unknown label stays out
  got = float(losses.heads_loss(logits, labels, mask, dataset, heads))
  np.testing.assert_allclose(got, _naive_heads_loss(logits, labels, mask, dataset, heads),
                             rtol=1e-6)
  other = logits.copy()                  # another dataset's head: no effect on these rows
  other[dataset == 0, 4:] += 10.0
  other[dataset == 1, :4] -= 10.0
  np.testing.assert_allclose(float(losses.heads_loss(other, labels, mask, dataset, heads)), got,
                             rtol=1e-6)
  own = logits.copy()
  own[dataset == 1, 4:7] += np.array([5.0, 0, 0])
  assert abs(float(losses.heads_loss(own, labels, mask, dataset, heads)) - got) > 1e-3
  grads = jax.grad(lambda z: losses.heads_loss(z, labels, mask, dataset, heads))(logits)
  for d, (_, c) in enumerate(heads):      # each row's gradient lives in its own head's slice
    start = sum(cc for _, cc in heads[:d])
    outside = np.delete(np.asarray(grads[dataset == d]), np.s_[start:start + c], axis=1)
    assert np.all(outside == 0)


def test_alignment_embeddings_come_before_fusion():
  """The pooled image embedding must not depend on the example's text (retrieval would be
  trivial), and the temperature starts at CLIP's."""
  model = build_model(tiny_model_config(align=True))
  image, ids, mask = inputs()
  _, aux = model(image, ids, mask)
  _, other = model(image, (ids + 1) % 200, mask)
  assert aux["image_embedding"].shape == (3, 64) and aux["text_embedding"].shape == (3, 64)
  np.testing.assert_array_equal(np.asarray(aux["image_embedding"]),
                                np.asarray(other["image_embedding"]))
  assert not np.allclose(aux["text_embedding"], other["text_embedding"])
  np.testing.assert_allclose(float(aux["log_scale"]), LOG_SCALE_INIT, rtol=1e-6)
  assert optax.global_norm(aux["image_embedding"]) > 0


@pytest.mark.slow   # a short training run with evaluation (CI's `pytest -m slow`)
def test_alignment_trains_and_evaluation_reports_retrieval(tmp_path):
  from conftest import shrunk_demo_config
  from medvlmoe_jax.experiment import train_and_evaluate
  from medvlmoe_jax.train.metric_writer import read_metrics
  c = shrunk_demo_config()
  c.model.align, c.train.align_weight = True, 1.0
  c.train.max_steps, c.train.eval_every_epochs = 4, 0.5
  rep = train_and_evaluate(c, str(tmp_path))
  rows = [r for r in read_metrics(str(tmp_path)) if r["split"] == "train"]
  assert all(np.isfinite(r["align_loss"]) and r["align_loss"] > 0 for r in rows)
  r = rep["retrieval"]
  assert set(r) >= {"image_to_text_R@1", "text_to_image_R@10", "text_to_image_chance_R@1"}
  assert 0 <= r["image_to_text_R@1"] <= r["image_to_text_R@5"] <= r["image_to_text_R@10"] <= 1
  assert r["image_to_text_chance_R@1"] == 1 / r["distinct_texts"] and r["distinct_texts"] > 32
  assert 0 < r["text_to_image_chance_R@1"] < 0.1


def test_word_vocabulary_keeps_the_ids_of_earlier_runs():
  """Words added for the second synthetic modality come after the first release's 106, so a
  demo workdir trained before reads the same token ids (sha256 of those 106, in id order,
  as commit 4f207b8 had them)."""
  import hashlib
  from medvlmoe_jax.data import synthetic
  from medvlmoe_jax.data.tokenizers import WordTokenizer
  words = synthetic.vocabulary()
  assert hashlib.sha256(" ".join(words[:106]).encode()).hexdigest()[:16] == "f24a1c0f19680e8d"
  tokenizer = WordTokenizer(words)
  assert tokenizer.vocab[2:] == words and len(set(words)) == len(words)
  ids, _ = tokenizer(["a fundus photograph , findings : finding 3 ."], 12)
  assert 1 not in ids[0]     # no unknown word


def test_multi_scale_expert_load_is_logged_by_the_train_step():
  from conftest import shrunk_demo_config
  from medvlmoe_jax.data import pipeline
  from medvlmoe_jax.train import trainer as trainer_lib
  c = shrunk_demo_config(num_train=64)
  c.model.vision.feature_layers = (1, 2)
  c.model.moe.granularity = "token"
  exp = trainer_lib.create_experiment(c)
  train_fn, _ = exp.jitted()
  it = pipeline.train_iterator(exp.data.splits["train"], c.data.batch_size, seed=0)
  _, metrics = train_fn(exp.state, next(it))
  share = np.asarray(metrics["expert_share_by_scale"])
  assert share.shape == (2, 8)
  np.testing.assert_allclose(share.sum(1), 1.0, rtol=1e-6)
