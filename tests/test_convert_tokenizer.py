"""BioGPT tokenizer files built from the fairseq release, checked against the release itself;
and the release folder given directly as the pipeline's tokenizer.

The expected ids come from a small BPE written here (fairseq / fastBPE spelling: `@@` marks a
word that continues) and from dict.txt's line order, never from the module under test.
"""

import json
import os
import re

import numpy as np
import pytest

from medvlmoe_jax.data.tokenizers import fairseq_ids, write_biogpt_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.path.dirname(ROOT), "shared", "data", "biogpt_tokenizer")
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq Dictionary: bos, pad, eos, unk

SENTENCES = [
    "A 58-year-old male patient, PA view.",
    "History of cough and fever; rule out pneumonia.",
    "Chest x-ray: cardiomegaly with pleural effusion?",
    "CT & MRI don't show bibasilar atelectasis or pneumomediastinum.",
]


@pytest.fixture(scope="module")
def release():
  files = {name: os.path.join(RELEASE, name) for name in ("dict.txt", "bpecodes")}
  missing = [p for p in files.values() if not os.path.isfile(p)]
  if missing:
    pytest.fail(f"BioGPT's fairseq tokenizer release is missing {missing}; expected it under "
                f"{RELEASE} (shared/data next to the repository root)")
  return files


@pytest.fixture(scope="module")
def dict_tokens(release):
  with open(release["dict.txt"], encoding="utf-8") as f:
    return [line.rstrip().rsplit(" ", 1)[0] for line in f]


@pytest.fixture(scope="module")
def codes(release):
  with open(release["bpecodes"], encoding="utf-8") as f:
    return [tuple(line.split()[:2]) for line in f]


@pytest.fixture(scope="module")
def out_dir(release, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("biogpt_tokenizer"))
  write_biogpt_tokenizer(release["dict.txt"], release["bpecodes"], out)
  return out


@pytest.fixture(scope="module")
def tokenizer(out_dir):
  from transformers import BioGptTokenizer
  return BioGptTokenizer.from_pretrained(out_dir)


def test_vocab_has_fairseq_ids(release, dict_tokens, out_dir, tokenizer):
  with open(os.path.join(out_dir, "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
  assert len(dict_tokens) == 42_380
  assert len(vocab) == len(tokenizer) == 42_384
  assert sorted(vocab.values()) == list(range(42_384))
  assert [vocab[s] for s in SPECIALS] == [0, 1, 2, 3]
  assert tokenizer.convert_tokens_to_ids(SPECIALS) == [0, 1, 2, 3]
  assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
          tokenizer.unk_token_id) == (0, 1, 2, 3)
  ids = fairseq_ids(release["dict.txt"])
  assert len(ids) == 42_384
  for line, token in enumerate(dict_tokens):
    # HF spells a continued piece without `@@` and a word-final one with `</w>`.
    hf = token[:-2] if token.endswith("@@") else token + "</w>"
    assert ids[token] == line + 4, token
    assert vocab[hf] == line + 4, (token, hf)


def test_merges_in_bpecodes_order(codes, out_dir, tokenizer):
  assert len(codes) == 40_000
  with open(os.path.join(out_dir, "merges.txt"), encoding="utf-8") as f:
    lines = f.read().split("\n")
  assert lines[-1] == ""  # BioGptTokenizer drops what follows the last newline
  assert [tuple(line.split()) for line in lines[:-1]] == codes
  assert tokenizer.bpe_ranks == {pair: rank for rank, pair in enumerate(codes)}


def _bpe(word, ranks):
  """fastBPE: merge the best-ranked adjacent pair everywhere, until no pair has a rank."""
  symbols = list(word[:-1]) + [word[-1] + "</w>"]
  while len(symbols) > 1:
    ranked = [(ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in ranks]
    if not ranked:
      break
    i = min(ranked)[1]
    best = symbols[i], symbols[i + 1]
    merged, i = [], 0
    while i < len(symbols):
      if tuple(symbols[i:i + 2]) == best:
        merged.append(symbols[i] + symbols[i + 1])
        i += 2
      else:
        merged.append(symbols[i])
        i += 1
    symbols = merged
  # fairseq's spelling: `@@` on every piece but the last, no `</w>`.
  return [s + "@@" for s in symbols[:-1]] + [symbols[-1][:-len("</w>")]]


@pytest.mark.parametrize("sentence", SENTENCES)
def test_clinical_sentences_match_fairseq(sentence, dict_tokens, codes, tokenizer):
  import sacremoses
  # BioGPT was trained on Moses-tokenized (`tokenizer.perl -a`, XML-escaped), cased text:
  # no lowercasing, as dict.txt holds `CT`, `MRI`, `History`.
  words = sacremoses.MosesTokenizer(lang="en").tokenize(
      sentence, aggressive_dash_splits=True, escape=True)
  ranks = {pair: rank for rank, pair in enumerate(codes)}
  index = {token: line + 4 for line, token in enumerate(dict_tokens)}
  pieces = [p for w in words for p in _bpe(w, ranks)]
  assert all(p in index for p in pieces), [p for p in pieces if p not in index]
  # BioGptTokenizer prepends `</s>` (id 2), as fairseq's LM starts every sample with its eos,
  # and appends nothing.
  expected = [2] + [index[p] for p in pieces]
  assert tokenizer(sentence)["input_ids"] == expected, tokenizer.convert_ids_to_tokens(expected)


def test_some_sentence_splits_words(dict_tokens, codes):
  """Guards the test above against comparing whole words only."""
  ranks = {pair: rank for rank, pair in enumerate(codes)}
  assert _bpe("cardiomegaly", ranks) == ["cardi@@", "omegaly"]
  assert "cardi@@" in dict_tokens


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


TINY_DICT = ". 10\nof 9\nthe 8\nt@@ 7\nh 6\n"
TINY_CODES = "t h 5\nth e</w> 4\n"


def test_tiny_release_round_trip(tmp_path):
  d, c = _write(tmp_path / "dict.txt", TINY_DICT), _write(tmp_path / "bpecodes", TINY_CODES)
  write_biogpt_tokenizer(d, c, str(tmp_path / "out"))
  with open(tmp_path / "out" / "vocab.json", encoding="utf-8") as f:
    assert json.load(f) == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, ".</w>": 4, "of</w>": 5,
                            "the</w>": 6, "t": 7, "h</w>": 8}
  assert fairseq_ids(d) == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, ".": 4, "of": 5,
                            "the": 6, "t@@": 7, "h": 8}


@pytest.mark.parametrize("name, text, line", [
    ("dict.txt", TINY_DICT.replace("the 8", "the"), 3),      # no count
    ("dict.txt", TINY_DICT.replace("of 9", "of nine"), 2),   # count not a number
    ("dict.txt", TINY_DICT + "of 1\n", 6),                   # duplicate token
    ("dict.txt", TINY_DICT + "\n", 6),                       # blank line
    ("bpecodes", TINY_CODES.replace("th e</w> 4", "the</w>"), 2),  # one field
    ("bpecodes", TINY_CODES + "t h 3\n", 3),                 # repeated merge
])
def test_damaged_line_names_file_and_line(tmp_path, name, text, line):
  files = {"dict.txt": TINY_DICT, "bpecodes": TINY_CODES, name: text}
  paths = {n: _write(tmp_path / n, t) for n, t in files.items()}
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=re.escape(f"{paths[name]}, line {line}:")):
    write_biogpt_tokenizer(paths["dict.txt"], paths["bpecodes"], str(out))
  assert not out.exists()  # inputs are checked before anything is written


@pytest.mark.parametrize("missing", ["dict.txt", "bpecodes"])
def test_missing_file_is_named(tmp_path, missing):
  paths = {"dict.txt": _write(tmp_path / "dict.txt", TINY_DICT),
           "bpecodes": _write(tmp_path / "bpecodes", TINY_CODES)}
  os.remove(paths[missing])
  out = tmp_path / "out"
  with pytest.raises(FileNotFoundError, match=re.escape(paths[missing])):
    write_biogpt_tokenizer(paths["dict.txt"], paths["bpecodes"], str(out))
  assert not out.exists()


def test_convert_builds_tokenizer_for_the_data_pipeline(tmp_path, release):
  """launch/convert.py --tokenizer_release -> the pipeline's BioGptTokenizer (fixed length,
  right padding, sentence token = last real position)."""
  from medvlmoe_jax.convert.encoders import convert
  from medvlmoe_jax.data.tokenizers import BioGptTokenizer
  convert(str(tmp_path / "out"), tokenizer_release=RELEASE)
  tok = BioGptTokenizer(str(tmp_path / "out"))
  assert tok.vocab_size == 42384
  ids, mask = tok(["A 58-year-old male patient, PA view.", "Cough."], max_len=16)
  assert ids.shape == (2, 16) and ids.dtype == np.int32
  assert mask[0].sum() > mask[1].sum() > 0
  assert np.all(ids[mask == 0] == 1)            # <pad>
  assert ids[0, 0] == 2 and ids[1, 0] == 2      # </s> first, as fairseq's LM


def _tiny_release(folder):
  folder.mkdir()
  _write(folder / "dict.txt", TINY_DICT)
  _write(folder / "bpecodes", TINY_CODES)
  return str(folder)


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_release_folder_tokenizes_as_the_converted_one(tmp_path, release, which):
  """data.tokenizer_path may name the fairseq release itself: it is converted on the fly,
  to the same ids, and nothing is written into it."""
  from medvlmoe_jax.data.pipeline import make_tokenizer
  from medvlmoe_jax.config import defaults
  folder = _tiny_release(tmp_path / "release") if which == "tiny" else RELEASE
  sentences = ["the the .", "of th t h .", "x"] if which == "tiny" else SENTENCES
  before = sorted(os.listdir(folder))
  write_biogpt_tokenizer(os.path.join(folder, "dict.txt"), os.path.join(folder, "bpecodes"),
                         str(tmp_path / "converted"))
  data = defaults().data
  data.tokenizer, data.tokenizer_path = "biogpt", str(tmp_path / "converted")
  want_ids, want_mask = make_tokenizer(data)(sentences, 24)
  data.tokenizer_path = folder
  tok = make_tokenizer(data)
  ids, mask = tok(sentences, 24)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(mask, want_mask)
  assert tok.vocab_size == (9 if which == "tiny" else 42_384)
  assert sorted(os.listdir(folder)) == before
  if which == "tiny":
    assert list(ids[0, :5]) == [2, 6, 6, 4, 1]    # </s> the the . <pad>


@pytest.mark.parametrize("present", [[], ["dict.txt"], ["vocab.json"], ["merges.txt", "bpecodes"]])
def test_folder_without_tokenizer_files_is_one_line(tmp_path, present):
  from medvlmoe_jax.data.tokenizers import BioGptTokenizer
  folder = tmp_path / "tok"
  folder.mkdir()
  for name in present:
    _write(folder / name, TINY_DICT if name == "dict.txt" else "")
  with pytest.raises(FileNotFoundError) as info:
    BioGptTokenizer(str(folder))
  message = str(info.value)
  assert message.startswith(f"{folder}: no BioGPT tokenizer: expected vocab.json + merges.txt")
  assert "dict.txt + bpecodes" in message and "\n" not in message
  assert message.endswith("found " + (", ".join(sorted(present)) or "none of them"))


def test_missing_tokenizer_folder_is_named(tmp_path):
  from medvlmoe_jax.data.tokenizers import BioGptTokenizer
  with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path}/gone: no such tokenizer folder")):
    BioGptTokenizer(str(tmp_path / "gone"))
