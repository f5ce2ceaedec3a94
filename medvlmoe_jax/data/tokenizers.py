"""Tokenizers: a closed-vocabulary word tokenizer (no download) and BioGPT's BPE.

Both return right-padded `(input_ids, attention_mask)` int32 arrays of a fixed length, so the
text stream's sentence token is the last position with mask 1.

BioGPT's tokenizer is read from transformers' files (vocab.json + merges.txt: a hub id, a
`save_pretrained` folder, or `launch/convert.py`'s output) or straight from the original
fairseq release (dict.txt + bpecodes), which is converted on the fly, as below.

The fairseq release has a dictionary (`dict.txt`, "token count" per line) and the BPE merges
(`bpecodes`, "a b count" per line). transformers' BioGptTokenizer instead wants:

- `vocab.json`: token -> id. Ids must be the ones fairseq's Dictionary gave the model's
  embedding rows: its four specials first (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3), then the
  dict.txt entries in line order from 4 (42,384 ids for BioGPT, the 7 trailing `madeupword`
  lines included, as they pad the embedding to a multiple of 8). The spelling of subwords
  differs: fairseq marks a word that continues with a trailing `@@`, BioGptTokenizer marks the
  piece that ends a word with `</w>`. So `le@@` becomes `le` and `er` becomes `er</w>`; the
  specials keep their names, as they never come out of BPE.
- `merges.txt`: one "a b" merge per line in bpecodes order (the line number is the rank), with
  no `#version` header, because BioGptTokenizer reads every line as a merge, and with a final
  newline, because it drops whatever follows the last one.

BioGptTokenizer prepends `</s>` (id 2) and appends nothing: fairseq's language model begins
every sample with its end-of-sentence token.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import numpy as np

from medvlmoe_jax.cli import BadInputError

PAD, UNK = "<pad>", "<unk>"
HF_FILES = ("vocab.json", "merges.txt")
RELEASE_FILES = ("dict.txt", "bpecodes")


class WordTokenizer:
  """Lower-cased words and punctuation looked up in a fixed vocabulary; id 0 is padding."""

  def __init__(self, words):
    """`words` in id order (from 2); repeats are dropped."""
    self.vocab = [PAD, UNK] + [w for w in dict.fromkeys(words) if w not in (PAD, UNK)]
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
  """transformers' BioGptTokenizer (Moses + BPE) from a hub id or a local folder: its own
  files, a `launch/convert.py` output (its `tokenizer/`), or BioGPT's fairseq release, which
  is converted into a temporary folder (under a second; nothing is written next to it)."""

  def __init__(self, path: str):
    from transformers import BioGptTokenizer as _Tok
    if os.path.isdir(os.path.join(path, "tokenizer")):
      path = os.path.join(path, "tokenizer")
    if not _local_release(path):
      self._tok = _Tok.from_pretrained(path)
      return
    with tempfile.TemporaryDirectory(prefix="biogpt_tokenizer_") as tmp:
      write_biogpt_tokenizer(*(os.path.join(path, f) for f in RELEASE_FILES), tmp)
      self._tok = _Tok.from_pretrained(tmp)   # reads both files now, keeps nothing open

  @property
  def vocab_size(self) -> int:
    return len(self._tok)

  def __call__(self, texts, max_len: int):
    enc = self._tok(list(texts), max_length=max_len, padding="max_length", truncation=True,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def _local_release(path: str) -> bool:
  """Whether `path` is a fairseq release folder to convert; False for transformers' files
  or a hub id. A local path with neither set of files is an error naming what it lacks."""
  if not os.path.isdir(path):
    if os.path.exists(path) or path.startswith((".", os.sep)):
      error = NotADirectoryError if os.path.exists(path) else FileNotFoundError
      raise error(f"{path}: no such tokenizer folder (expected one with {' + '.join(HF_FILES)} "
                  f"or BioGPT's {' + '.join(RELEASE_FILES)})")
    return False   # a hub id
  has = lambda files: all(os.path.isfile(os.path.join(path, f)) for f in files)
  if has(HF_FILES):
    return False
  if has(RELEASE_FILES):
    return True
  found = sorted(f for f in HF_FILES + RELEASE_FILES if os.path.exists(os.path.join(path, f)))
  raise FileNotFoundError(
      f"{path}: no BioGPT tokenizer: expected {' + '.join(HF_FILES)} (transformers' files, as "
      f"launch/convert.py writes them) or {' + '.join(RELEASE_FILES)} (the original fairseq "
      f"release); found {', '.join(found) or 'none of them'}")


# ---------------------------------------------------------------------------- fairseq release


SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary's bos, pad, eos, unk
CONTINUATION, END_OF_WORD = "@@", "</w>"
_OVERWRITE = "#fairseq:overwrite"


def _lines(path: str, what: str):
  """(line number, line) pairs, split as fairseq's text-mode readlines splits them."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (expected BioGPT's fairseq {what})")
  n = 0
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        yield n, line
  except UnicodeDecodeError as e:
    raise BadInputError(f"{path}, line {n + 1}: not UTF-8 text ({e.reason})") from e


def _read_dict(dict_txt: str) -> tuple[dict[str, int], dict[str, int], list[int]]:
  """fairseq's token -> id, the line each token came from, and lines that shadow an id."""
  ids = {s: i for i, s in enumerate(SPECIALS)}
  origin, shadowing = {}, []
  n_ids = len(SPECIALS)
  for lineno, line in _lines(dict_txt, "dictionary dict.txt"):
    where = f"{dict_txt}, line {lineno}"
    # fairseq's Dictionary.add_from_file: the count is the last space-separated field.
    fields = line.rstrip().rsplit(" ", 1)
    overwrite = len(fields) == 2 and fields[1] == _OVERWRITE
    if overwrite:
      fields = fields[0].rsplit(" ", 1)
    if len(fields) != 2 or not fields[0]:
      raise BadInputError(f"{where}: expected '<token> <count> [{_OVERWRITE}]', "
                          f"got {line.rstrip()!r}")
    token, count = fields
    try:
      int(count)
    except ValueError:
      raise BadInputError(f"{where}: count {count!r} of {token!r} is not an integer") from None
    if token in ids and not overwrite:
      first = f"line {origin[token]}" if token in origin else "fairseq's built-in specials"
      raise BadInputError(f"{where}: duplicate token {token!r} (already at {first})")
    if token in ids:
      shadowing.append(lineno)
    ids[token] = n_ids
    origin[token] = lineno
    n_ids += 1
  return ids, origin, shadowing


def fairseq_ids(dict_txt: str) -> dict[str, int]:
  """The id fairseq's `Dictionary.load(dict_txt)` gives each token, specials included."""
  return _read_dict(dict_txt)[0]


def _read_merges(bpecodes: str) -> list[tuple[str, str]]:
  merges, rank = [], {}
  for lineno, line in _lines(bpecodes, "BPE codes bpecodes"):
    if lineno == 1 and line.startswith("#version"):
      continue  # subword-nmt's header; BioGptTokenizer would take it for a merge
    where = f"{bpecodes}, line {lineno}"
    fields = line.split()
    if len(fields) not in (2, 3):
      raise BadInputError(f"{where}: expected '<left> <right> [count]', got {line.rstrip()!r}")
    if len(fields) == 3:
      try:
        int(fields[2])
      except ValueError:
        raise BadInputError(f"{where}: count {fields[2]!r} is not an integer") from None
    pair = (fields[0], fields[1])
    if pair in rank:
      # BPE implementations disagree on which rank a repeated merge keeps.
      raise BadInputError(f"{where}: merge {' '.join(pair)!r} repeats line {rank[pair]}")
    rank[pair] = lineno
    merges.append(pair)
  return merges


def hf_token(token: str) -> str:
  """fairseq's spelling of a subword (`le@@`, `er`) in BioGptTokenizer's (`le`, `er</w>`)."""
  if token in SPECIALS:
    return token
  if token.endswith(CONTINUATION):
    return token[:-len(CONTINUATION)]
  return token + END_OF_WORD


def write_biogpt_tokenizer(dict_txt: str, bpecodes: str, out_dir: str) -> None:
  """Write vocab.json, merges.txt and tokenizer_config.json for BioGptTokenizer into out_dir.

  Both inputs are read and checked before anything is written, so a bad release leaves no
  half-built directory behind.
  """
  ids, origin, shadowing = _read_dict(dict_txt)
  if shadowing:
    # The shadowed id still has an embedding row but no token, which vocab.json (token -> id)
    # cannot express.
    raise BadInputError(f"{dict_txt}, line {shadowing[0]}: {_OVERWRITE} re-assigns a token; "
                     "BioGptTokenizer cannot keep the id it shadows")
  merges = _read_merges(bpecodes)

  vocab, source = {}, {}
  for token, i in sorted(ids.items(), key=lambda kv: kv[1]):
    key = hf_token(token)
    if key in vocab:
      raise BadInputError(f"{dict_txt}, line {origin[token]}: {token!r} becomes {key!r} for "
                       f"BioGptTokenizer, as {source[key]!r} does")
    vocab[key], source[key] = i, token

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False, indent=0)
    f.write("\n")
  with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
    f.writelines(f"{a} {b}\n" for a, b in merges)
  config = {
      "tokenizer_class": "BioGptTokenizer",  # lets AutoTokenizer pick it without a config.json
      "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>",
      "unk_token": "<unk>",
      "model_max_length": 1024,  # BioGPT's learned position table
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
