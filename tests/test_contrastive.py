"""The CLIP-style InfoNCE loss against a naive per-row reference, and retrieval recall
against hand-worked rankings (ties, duplicate sentences, k above N)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medvlmoe_jax.eval.retrieval import chance_recall, recall_at_k
from medvlmoe_jax.models.medvlmoe import LOG_SCALE_INIT
from medvlmoe_jax.train.contrastive import LOG_SCALE_MAX, info_nce

pytestmark = pytest.mark.float32_parity


def naive_info_nce(image_emb, text_emb, log_scale, valid=None) -> float:
  """Double loop in float64 over the valid rows only, with an explicit log-softmax per row."""
  rows = [i for i in range(len(image_emb)) if valid is None or valid[i]]
  unit = lambda v: np.asarray(v, np.float64) / np.linalg.norm(np.asarray(v, np.float64))
  img = [unit(image_emb[i]) for i in rows]
  txt = [unit(text_emb[i]) for i in rows]
  scale = math.exp(min(log_scale, math.log(100.0)))

  def log_softmax_at(logits, i):
    top = max(logits)
    return logits[i] - top - math.log(sum(math.exp(x - top) for x in logits))

  total = 0.0
  for i in range(len(rows)):
    i2t = [scale * float(img[i] @ txt[j]) for j in range(len(rows))]
    t2i = [scale * float(txt[i] @ img[j]) for j in range(len(rows))]
    total += -0.5 * (log_softmax_at(i2t, i) + log_softmax_at(t2i, i))
  return total / len(rows)


def embeddings(b, d, seed=0):
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(b, d)).astype(np.float32)
  txt = (0.7 * img + rng.normal(size=(b, d))).astype(np.float32)   # partly aligned
  return img, txt


@pytest.mark.parametrize("log_scale", [0.0, LOG_SCALE_INIT, LOG_SCALE_MAX + 1.0])
@pytest.mark.parametrize("masked", [False, True])
def test_info_nce_equals_naive(log_scale, masked):
  img, txt = embeddings(12, 16)
  valid = np.arange(12) % 3 != 1 if masked else None
  got = info_nce(jnp.asarray(img), jnp.asarray(txt), log_scale,
                 None if valid is None else jnp.asarray(valid))
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), naive_info_nce(img, txt, log_scale, valid),
                             rtol=1e-6, atol=1e-6)


def test_padding_rows_take_no_part():
  """Padding rows, whatever they hold, change neither the loss nor the valid rows' gradients."""
  img, txt = embeddings(8, 16)
  valid = np.array([1, 1, 0, 1, 1, 0, 1, 0], bool)
  rng = np.random.default_rng(5)
  pad_img, pad_txt = img.copy(), txt.copy()
  pad_img[~valid] = 50 * rng.normal(size=(3, 16))
  pad_txt[~valid] = pad_img[~valid]                 # padding that would align perfectly
  grad = jax.jit(jax.value_and_grad(info_nce, argnums=(0, 1)))
  loss, (g_img, g_txt) = grad(pad_img, pad_txt, LOG_SCALE_INIT, valid)
  ref, (r_img, r_txt) = grad(img[valid], txt[valid], LOG_SCALE_INIT)
  np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g_img[valid], r_img, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_txt[valid], r_txt, rtol=1e-5, atol=1e-7)
  assert not np.any(g_img[~valid]) and not np.any(g_txt[~valid])
  zero_pad = info_nce(np.where(valid[:, None], img, 0), np.where(valid[:, None], txt, 0),
                      LOG_SCALE_INIT, valid)
  np.testing.assert_allclose(zero_pad, ref, rtol=1e-6, atol=1e-6)


def test_all_padding_gives_zero_not_nan():
  img, txt = embeddings(4, 8)
  loss, grads = jax.jit(jax.value_and_grad(info_nce, argnums=(0, 1, 2)))(
      img, txt, LOG_SCALE_INIT, np.zeros(4, bool))
  assert float(loss) == 0.0
  assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_gradients_reach_scale_and_embeddings():
  img, txt = embeddings(8, 16)
  grads = jax.jit(jax.grad(info_nce, argnums=(0, 1, 2)))(img, txt, jnp.float32(LOG_SCALE_INIT))
  for g in grads:
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)


def test_scale_is_clamped_at_100():
  img, txt = embeddings(8, 16)
  at_max = info_nce(img, txt, LOG_SCALE_MAX)
  np.testing.assert_allclose(info_nce(img, txt, LOG_SCALE_MAX + 3.0), at_max, rtol=1e-7)
  assert float(jax.grad(info_nce, argnums=2)(img, txt, LOG_SCALE_MAX + 1.0)) == 0.0
  assert float(jax.grad(info_nce, argnums=2)(img, txt, LOG_SCALE_MAX - 1.0)) != 0.0
  assert float(info_nce(img, txt, LOG_SCALE_MAX - 1.0)) != pytest.approx(float(at_max))


def test_aligned_near_zero_shuffled_near_chance():
  b = 64
  rng = np.random.default_rng(0)
  img = np.linalg.qr(rng.normal(size=(128, b)))[0].T.astype(np.float32)   # orthonormal rows
  assert float(info_nce(img, img, LOG_SCALE_MAX)) < 1e-6
  shuffled = img[np.roll(np.arange(b), 1)]          # a derangement: no pair is right
  # Scale 1: logits within [-1, 1] barely separate, so the loss stays at chance, log(B).
  assert abs(float(info_nce(img, shuffled, 0.0)) - math.log(b)) < 0.05
  # Scale 100: each row is confidently wrong.
  assert float(info_nce(img, shuffled, LOG_SCALE_MAX)) > 90.0


# --- retrieval ---

def test_recall_hand_worked_with_ties():
  """Similarities S[i, j] = image i . text j:
       [[1, a, 0, 0], [0, a, 0, 0], [0, 0, 0, a], [0, 0, 1, a]],  a = 1/sqrt(2).
  Image->text ranks of the right text: 0, 0, 3 (behind text 3 and the tied texts 0, 1), 1.
  Text->image: 0, 1 (tied with image 0), 3, 1 (tied with image 2)."""
  img = np.eye(4)
  txt = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]], float)
  r = recall_at_k(img, txt, ks=(1, 2, 3, 4))
  assert r == {
      "image_to_text_R@1": 0.5, "image_to_text_R@2": 0.75, "image_to_text_R@3": 0.75,
      "image_to_text_R@4": 1.0,
      "text_to_image_R@1": 0.25, "text_to_image_R@2": 0.75, "text_to_image_R@3": 0.75,
      "text_to_image_R@4": 1.0,
  }


def test_recall_equals_stable_argsort():
  rng = np.random.default_rng(3)
  img = np.round(rng.normal(size=(50, 3)), 0)       # coarse values: many tied similarities
  txt = np.round(img + rng.normal(size=(50, 3)), 0)
  keys = rng.integers(0, 20, size=50)
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  # The same matmuls as recall_at_k, so that float rounding breaks no tie differently;
  # image -> text ranks one text per key (the first), as one sentence is one embedding.
  first = np.unique(keys, return_index=True)[1]
  for name, sim, candidate_keys in (("image_to_text", unit(img) @ unit(txt)[first].T, keys[first]),
                                    ("text_to_image", unit(txt) @ unit(img).T, keys)):
    order = np.argsort(-sim, axis=1, kind="stable")
    hit = candidate_keys[order] == keys[:, None]
    for k in (1, 5, 10):
      got = recall_at_k(img, txt, ks=(k,), text_keys=keys)[f"{name}_R@{k}"]
      assert got == pytest.approx(np.mean(hit[:, :k].any(axis=1)))


def test_recall_with_duplicate_sentences():
  """Texts 0 and 2 are one sentence: retrieving either for image 0 or 2 is right."""
  img = np.array([[1, 0], [0, 1], [1, 0]], float)
  txt = img.copy()
  plain = recall_at_k(img, txt, ks=(1,))
  assert plain == {"image_to_text_R@1": 2 / 3, "text_to_image_R@1": 2 / 3}
  for keys in (["no finding", "effusion", "no finding"], [hash("a"), 7, hash("a")]):
    assert recall_at_k(img, txt, ks=(1,), text_keys=keys) == {
        "image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}


def test_recall_k_clipped_and_inputs_checked():
  img, txt = embeddings(3, 4)
  r = recall_at_k(img, txt, ks=(1, 10))
  assert r["image_to_text_R@10"] == 1.0 and r["text_to_image_R@10"] == 1.0
  assert chance_recall(10, 5) == 0.5 and chance_recall(3, 10) == 1.0
  with pytest.raises(ValueError):
    recall_at_k(img, txt[:2])
  with pytest.raises(ValueError):
    recall_at_k(img, txt, text_keys=[1, 2])
  with pytest.raises(ValueError):
    recall_at_k(img, txt, ks=(0,))
