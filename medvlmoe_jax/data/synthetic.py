"""The demo dataset: deterministic, made in code, learnable in a minute on a CPU.

Each of the C labels is an independent coin (p = 0.3). A positive label draws a bright
square at that label's own place in the image. For the last two labels the square is faint
and the clinical sentence carries the signal instead (a symptom word, present for 85% of
positives and 10% of negatives), so a model that ignores the text scores lower on them. Age,
sex and view are noise.

With `describe`, the text instead names the findings of its image ("findings : finding 1 ,
finding 4 ." or "findings : none ."): an image's own text, for image-text retrieval.

`modality` 1 is a second imaging modality for multi-dataset runs: the same findings drawn
dark on a bright background, and texts that open with "a fundus photograph ,", so that a
router can tell it from modality 0 (the demo set, unchanged) by either stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.data.builder import Builder, Example

SYMPTOMS = ["cough", "fever", "dyspnea", "chest pain", "fatigue", "wheezing", "edema", "syncope"]
TEXT_LABELS = 2          # the last labels are mostly visible in the text
_FILLER = ["history of", "presents with", "complains of"]
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}
MODALITY_WORDS = ("", "a fundus photograph ,")


@dataclasses.dataclass
class Split:
  """One split in memory; `labels` is (N, C) float32 in {0, 1}."""
  images: np.ndarray            # (N, H, W, 3) uint8
  texts: list[str]
  labels: np.ndarray
  label_mask: np.ndarray        # (N, C) bool


def class_names(num_classes: int) -> list[str]:
  return [f"finding_{k}" for k in range(num_classes)]


def vocabulary() -> list[str]:
  """The word tokenizer's vocabulary, in id order. Words added later go after the first
  release's (sorted), so that the token ids of runs trained before keep their meaning."""
  words = {"a", "year", "old", "male", "female", "patient", ",", ".", "pa", "ap", "lateral",
           "view", "no", "symptoms"}
  for phrase in SYMPTOMS + _FILLER:
    words.update(phrase.split())
  words.update(str(a) for a in range(18, 96))
  added = {"finding", "findings", "none", ":", *(str(a) for a in range(18))}
  for phrase in MODALITY_WORDS:
    added.update(phrase.split())
  return sorted(words) + sorted(added - words)


def _sentence(rng, labels) -> str:
  num_classes = len(labels)
  words = []
  for k in range(num_classes - TEXT_LABELS, num_classes):
    if rng.random() < (0.85 if labels[k] else 0.10):
      words.append(SYMPTOMS[k % len(SYMPTOMS)])
  if rng.random() < 0.5:   # a distractor symptom unrelated to any label
    words.append(SYMPTOMS[-1 - rng.integers(0, 3)])
  symptoms = " and ".join(words) if words else "no symptoms"
  return (f"a {rng.integers(18, 96)} year old {rng.choice(['male', 'female'])} patient , "
          f"{rng.choice(['pa', 'ap', 'lateral'])} view . {rng.choice(_FILLER)} {symptoms} .")


def _findings(labels) -> str:
  named = " , ".join(f"finding {k}" for k in np.nonzero(labels)[0])
  return f"findings : {named or 'none'} ."


def make_split(split: str, num_examples: int, num_classes: int, image_size: int,
               seed: int, modality: int = 0, describe: bool = False) -> Split:
  if modality not in (0, 1):
    raise ValueError(f"synthetic modality {modality!r} is not 0 or 1")
  rng = np.random.default_rng([seed, SPLIT_OFFSET[split]] + [modality] * (modality > 0))
  labels = (rng.random((num_examples, num_classes)) < 0.3).astype(np.float32)
  images = rng.normal(60, 25, (num_examples, image_size, image_size, 1))
  grid = int(np.ceil(np.sqrt(num_classes)))
  cell = image_size // grid
  size = max(cell // 2, 2)
  for k in range(num_classes):
    amplitude = 35 if k >= num_classes - TEXT_LABELS else 110
    cy, cx = (k // grid) * cell, (k % grid) * cell
    for i in np.nonzero(labels[:, k])[0]:
      dy, dx = rng.integers(0, cell - size + 1, 2)
      images[i, cy + dy:cy + dy + size, cx + dx:cx + dx + size] += amplitude
  images = np.repeat(np.clip(images, 0, 255).astype(np.uint8), 3, axis=-1)
  texts = [_sentence(rng, labels[i]) for i in range(num_examples)]
  if describe:
    texts = [_findings(labels[i]) for i in range(num_examples)]
  if modality:
    images = 255 - images
    texts = [f"{MODALITY_WORDS[modality]} {t}" for t in texts]
  return Split(images=images, texts=texts, labels=labels,
               label_mask=np.ones_like(labels, dtype=bool))


class Synthetic(Builder):
  """The demo set as a TFDS dataset (the demo config makes it in memory instead)."""

  name = "synthetic"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Squares per label, symptom words for the last two labels."}
  TASK = "multilabel"
  TEXT_POLICY = "age, sex and view (noise) and symptom words tied to the last two labels"
  DESCRIPTION = __doc__
  HOMEPAGE = "https://github.com/medvlmoe/medvlmoe_jax"

  def __init__(self, *, num_train: int = 2048, num_val: int = 512, num_test: int = 512,
               num_classes: int = 6, seed: int = 1234, **kwargs):
    self.sizes = {"train": num_train, "val": num_val, "test": num_test}
    self.num_classes, self.seed = num_classes, seed
    self.CLASSES = tuple(class_names(num_classes))
    super().__init__(**kwargs)

  def metadata(self) -> dict:
    return {"sizes": self.sizes, "seed": self.seed}

  def read(self, src) -> dict[str, list[Example]]:
    out = {}
    for split, n in self.sizes.items():
      s = make_split(split, n, self.num_classes, self.image_size, self.seed)
      out[split] = [Example(key=f"{split}-{i}", where=f"synthetic {split}[{i}]",
                            image=s.images[i], text=s.texts[i], labels=s.labels[i],
                            label_mask=s.label_mask[i]) for i in range(n)]
    return out
