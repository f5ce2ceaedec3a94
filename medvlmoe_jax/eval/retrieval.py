"""Image<->text retrieval recall (R@k) for checking an aligned embedding space.

Pure NumPy in float64 so reports can be produced on any host, without JAX.
"""

from __future__ import annotations

import numpy as np

# Query rows per similarity block: bounds memory to ~_CHUNK x N float64 for large eval sets.
_CHUNK = 1024


def _unit(x) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ranks(queries, candidates, q_codes, c_codes) -> np.ndarray:
  """0-based rank of each query's first correct candidate in a stable argsort of -similarity.

  Counted instead of sorted: the first correct one is the most similar correct candidate
  (the lowest index among ties); ahead of it are the strictly more similar candidates and
  the equally similar ones with a lower index.
  """
  n = candidates.shape[0]
  index = np.arange(n)
  ranks = np.empty(queries.shape[0], np.int64)
  for start in range(0, queries.shape[0], _CHUNK):
    s = queries[start:start + _CHUNK] @ candidates.T
    correct = q_codes[start:start + _CHUNK, None] == c_codes[None, :]
    best = np.where(correct, s, -np.inf).max(axis=1, keepdims=True)
    first = np.argmax(correct & (s == best), axis=1)[:, None]
    ahead = np.sum(s > best, axis=1) + np.sum((s == best) & (index < first), axis=1)
    ranks[start:start + _CHUNK] = ahead
  return ranks


def recall_at_k(image_emb, text_emb, ks=(1, 5, 10), text_keys=None) -> dict[str, float]:
  """Fraction of queries whose correct match is among the top k, both directions.

  Cosine similarity; image i's correct text is text i and vice versa. With `text_keys`
  (N,) (the report sentence, or a hash of it) every candidate sharing the query's key is
  correct, because several studies may share one sentence (e.g. "No acute findings."), and
  retrieving a twin is not an error: text j is correct for image i if keys[j] == keys[i],
  image i is correct for text j likewise. Image -> text then ranks the distinct texts only
  (the first of each key: one sentence is one embedding), so that copies of one wrong
  sentence cannot fill the top k. Ties rank by a stable argsort of -similarity (the lower
  index first), so tied scores are neither rewarded nor penalised at random. k above the
  number of candidates is clipped (recall 1.0); the key keeps the requested k so that
  reports line up.
  """
  img, txt = _unit(image_emb), _unit(text_emb)
  if img.ndim != 2 or img.shape != txt.shape:
    raise ValueError(f"image {img.shape} and text {txt.shape} embeddings must be equal (N, D)")
  n = img.shape[0]
  if text_keys is None:
    codes = np.arange(n)
  else:
    keys = np.asarray(text_keys)
    if keys.shape != (n,):
      raise ValueError(f"text_keys has shape {keys.shape}, expected ({n},)")
    codes = np.unique(keys, return_inverse=True)[1].reshape(n)
  ks = [int(k) for k in ks]
  if any(k < 1 for k in ks):
    raise ValueError(f"ks must be positive, got {ks}")
  first = np.unique(codes, return_index=True)[1]     # one text per key
  out = {}
  for name, queries, candidates, c_codes in (
      ("image_to_text", img, txt[first], codes[first]), ("text_to_image", txt, img, codes)):
    ranks = _ranks(queries, candidates, codes, c_codes) if n else None
    for k in ks:
      out[f"{name}_R@{k}"] = (float(np.mean(ranks < min(k, len(candidates)))) if n
                              else float("nan"))
  return out


def chance_recall(n: int, k: int) -> float:
  """R@k of a random ranking with unique keys: the baseline that a recall must beat."""
  return min(k, n) / n if n else float("nan")
