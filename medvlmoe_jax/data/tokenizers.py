"""Tokenizers: a closed-vocabulary word tokenizer (no download) and BioGPT's BPE.

Both return right-padded `(input_ids, attention_mask)` int32 arrays of a fixed length, so the
text stream's sentence token is the last position with mask 1.
"""

from __future__ import annotations

import re

import numpy as np

PAD, UNK = "<pad>", "<unk>"


class WordTokenizer:
  """Lower-cased words and punctuation looked up in a fixed vocabulary; id 0 is padding."""

  def __init__(self, words):
    self.vocab = [PAD, UNK] + sorted(set(words) - {PAD, UNK})
    self.index = {w: i for i, w in enumerate(self.vocab)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def tokenize(self, text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())

  def __call__(self, texts, max_len: int):
    ids = np.zeros((len(texts), max_len), np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for row, text in enumerate(texts):
      tokens = [self.index.get(t, 1) for t in self.tokenize(text)][:max_len]
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return ids, mask


class BioGptTokenizer:
  """transformers' BioGptTokenizer (Moses + BPE) from a local directory or hub id.

  `path` may also be a `launch/convert.py` output directory (its `tokenizer/` is used).
  """

  def __init__(self, path: str):
    import os

    from transformers import BioGptTokenizer as _Tok
    if os.path.isdir(os.path.join(path, "tokenizer")):
      path = os.path.join(path, "tokenizer")
    self._tok = _Tok.from_pretrained(path)

  @property
  def vocab_size(self) -> int:
    return len(self._tok)

  def __call__(self, texts, max_len: int):
    enc = self._tok(list(texts), max_length=max_len, padding="max_length", truncation=True,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
