"""CheXpert v1.0 (or -small) as Stanford ships it, as a TFDS builder; its label and
uncertainty-policy helpers serve MIMIC-CXR too.

Decisions:
- Labels: 1 positive, 0 negative, -1 uncertain, blank = not mentioned in the report. Blank
  is negative (0, in the loss), as in the CheXpert paper: radiologists do not list absent
  findings. Uncertain follows its class's policy: `u_ones` (-> 1), `u_zeros` (-> 0) or
  `u_ignore` (label_mask False). The default `u_ignore` invents no label; the paper's best
  single-policy choices are `Atelectasis=u_ones,Edema=u_ones`.
- Frontal views only by default: the model classifies one image, as for ChestX-ray14 / MIMIC.
- Splits: the test set is not public, so the official `valid.csv` (234 images, a consensus
  of radiologists) is `test`; `val` is carved from all of `train.csv` by patient
  (`sources.patient_split`), so it does not depend on `frontal_only`.
- The image is found from the `<split>/patientN/studyM/<file>` tail of `Path`, whatever
  the prefix (the release folder, an absolute path).
- Text: `sources.sentence` from age (0 means unknown in the release), sex and a view phrase
  from a fixed vocabulary, so no label word can reach the text stream.
"""

from __future__ import annotations

import math
import os
import re
from typing import Iterable, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.data.builder import Builder, Example
from medvlmoe_jax.data.sources import BadInputError, Problems, csv_rows, patient_split, sentence

CLASSES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
           "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
           "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
RELEASE_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
SPLIT_FILES = {"valid": "valid.csv", "train": "train.csv"}
POLICIES = ("u_ones", "u_zeros", "u_ignore")
DEFAULT_POLICY = "u_ignore"
BLANK_LABEL = 0.0
COUNT_KEYS = ("1", "0", "-1", "blank")
SEXES = ("male", "female", "unknown", "")
VIEWS = ("frontal", "lateral")
PROJECTIONS = ("AP", "PA", "LL", "RL")       # the only codes a sentence may carry
_PATH_TAIL = re.compile(r"([^/]+/(patient\d+)/(study\d+)/[^/]+)$")


# ---------------------------------------------------------------------------- labels (shared)

def parse_label(text: str) -> float:
  """'1.0' / '0' / '-1.0' / '' -> 1.0 / 0.0 / -1.0 / nan; anything else is an error."""
  if not text.strip():
    return math.nan
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if value not in (1.0, 0.0, -1.0):
    raise ValueError(f"{text!r} is not a label (expected 1, 0, -1 or blank)")
  return value


def parse_labels(values: dict[str, str], where: str, problems: Problems) -> np.ndarray | None:
  """The 14 raw labels of a CSV row, by column name; None (reported) if one is bad."""
  raw = np.empty(len(CLASSES), np.float32)
  for i, c in enumerate(CLASSES):
    try:
      raw[i] = parse_label(values[c])
    except ValueError as e:
      problems.report("bad_label", where, f"column {c!r}: {e}")
      return None
  return raw


def _norm_name(name: str) -> str:
  return " ".join(name.replace("_", " ").split()).lower()


def parse_policy(spec: str | dict | None = None) -> dict[str, str]:
  """'u_ones' | 'Atelectasis=u_ones,Edema=u_ones,default=u_ignore' | {class: policy} -> a
  policy for every class. Class names match case-insensitively, '_' standing for ' '."""
  if spec is None or isinstance(spec, str):
    spec = (spec or "").strip() or DEFAULT_POLICY
    parts = [p.strip() for p in ("default=" + spec if "=" not in spec else spec).split(",")]
    bad = [p for p in parts if p and "=" not in p]
    if bad:
      raise ValueError(f"policy {bad[0]!r}: expected CLASS=POLICY or default=POLICY")
    spec = dict(p.split("=", 1) for p in parts if p)
  by_norm = {_norm_name(c): c for c in CLASSES + ("default",)}
  chosen = {}
  for key, value in spec.items():
    policy = value.strip().lower().replace("-", "_")
    if policy not in POLICIES:
      raise ValueError(f"uncertainty policy {value!r} for {key!r} is not one of {POLICIES}")
    if _norm_name(key) not in by_norm:
      raise ValueError(f"policy names unknown class {key!r}; classes are {list(CLASSES)}")
    chosen[by_norm[_norm_name(key)]] = policy
  return {c: chosen.get(c, chosen.get("default", DEFAULT_POLICY)) for c in CLASSES}


def apply_policy(raw: np.ndarray, policy: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
  """Raw (..., C) values in {1, 0, -1, nan} -> (labels float32, label_mask bool)."""
  raw = np.asarray(raw, np.float32)
  ones = np.array([policy[c] == "u_ones" for c in CLASSES])
  ignore = np.array([policy[c] == "u_ignore" for c in CLASSES])
  uncertain = raw == -1
  labels = np.where(raw == 1, 1.0, np.where(np.isnan(raw), BLANK_LABEL, 0.0))
  return np.where(uncertain & ones, 1.0, labels).astype(np.float32), ~(uncertain & ignore)


def policy_metadata(policy: dict[str, str], frontal_only: bool) -> dict:
  return {"uncertainty_policy": policy, "blank_label": BLANK_LABEL,
          "views": "frontal" if frontal_only else "all"}


def label_counts(raws: list[np.ndarray]) -> dict[str, dict[str, int]]:
  raw = np.stack(raws) if raws else np.zeros((0, len(CLASSES)), np.float32)
  return {c: {"1": int(np.sum(raw[:, i] == 1)), "0": int(np.sum(raw[:, i] == 0)),
              "-1": int(np.sum(raw[:, i] == -1)), "blank": int(np.sum(np.isnan(raw[:, i])))}
          for i, c in enumerate(CLASSES)}


def count_missing(images: Iterable[tuple[str, str]], problems: Problems) -> int:
  """Looks (where, image path) up without decoding (the build decodes); reports the missing."""
  missing = 0
  for where, path in images:
    if not os.path.exists(path):
      missing += 1
      problems.report("missing_image", where, f"{path}: no such image file")
  return missing


# ---------------------------------------------------------------------------- CheXpert CSVs

class Row(NamedTuple):
  where: str            # "file, row N"
  rel_path: str         # <split>/patientN/studyM/viewK_*.jpg, relative to the root
  patient_id: str
  study: str            # patientN/studyM
  sex: str
  age: int | None
  view: str             # Frontal | Lateral
  projection: str
  raw: np.ndarray       # (C,) float32 in {1, 0, -1, nan}

  @property
  def frontal(self) -> bool:
    return self.view.lower() == "frontal"

  @property
  def text(self) -> str:
    code = self.projection.upper()
    phrase = " ".join([self.view.lower()] + ([code] if code in PROJECTIONS else []))
    return sentence(self.age, self.sex, phrase + " view")


def find_file(folder: str, name: str) -> str | None:
  """folder/name, or folder/name.gz (CSVs are read either way); None if neither exists."""
  return next((p for p in (os.path.join(folder, name), os.path.join(folder, name + ".gz"))
               if os.path.exists(p)), None)


def _csv_paths(root: str) -> dict[str, str]:
  return {name: find_file(root, f) for name, f in SPLIT_FILES.items() if find_file(root, f)}


def find_root(src: str) -> str:
  """The folder holding train.csv / valid.csv: `src` itself or `src/CheXpert-v1.0(-small)`."""
  candidates = [src] + [os.path.join(src, d) for d in RELEASE_DIRS]
  for root in candidates:
    if _csv_paths(root):
      return root
  raise FileNotFoundError(f"--src {src!r}: no valid.csv or train.csv in any of {candidates}")


def _parse_age(text: str) -> int | None:
  """None when unknown (blank or 0); ValueError when not an age."""
  try:
    age = float(text) if text.strip() else 0.0
  except ValueError:
    age = math.nan
  if not 0 <= age <= 150:       # also nan
    raise ValueError(f"Age is {text!r} (expected a number of years)")
  return int(age) or None


def _row_problem(v: dict[str, str], tail: re.Match | None, seen: dict[str, str]) -> str:
  if "_error" in v:
    return v["_error"]
  if not tail:
    return f"Path {v['Path']!r} does not end in <split>/patientN/studyM/<file>"
  if tail[1] in seen:
    return f"Path {v['Path']!r} repeats {seen[tail[1]]}"
  if v["Frontal/Lateral"].strip().lower() not in VIEWS:
    return f"Frontal/Lateral is {v['Frontal/Lateral']!r} (expected Frontal or Lateral)"
  if v["Sex"].strip().lower() not in SEXES:
    return f"Sex is {v['Sex']!r} (expected Male, Female, Unknown or blank)"
  return ""


def read_csv(path: str, problems: Problems) -> list[Row]:
  """One CheXpert CSV -> rows; bad rows go to `problems` (raise, or count and skip)."""
  rows, seen = [], {}
  for where, v in csv_rows(path, META_COLUMNS + CLASSES):
    tail = None if "_error" in v else _PATH_TAIL.search(v["Path"].strip().replace("\\", "/"))
    problem = _row_problem(v, tail, seen)
    try:
      age = None if problem else _parse_age(v["Age"])
    except ValueError as e:
      problem = str(e)
    if problem:
      problems.report("bad_row", where, problem)
      continue
    raw = parse_labels(v, where, problems)
    if raw is not None:
      seen[tail[1]] = where.rsplit(", ", 1)[1]
      rows.append(Row(where, tail[1], tail[2], f"{tail[2]}/{tail[3]}", v["Sex"].strip(), age,
                      v["Frontal/Lateral"].strip(), v["AP/PA"].strip(), raw))
  return rows


def check(src: str, labels_only: bool = False, problems: Problems | None = None) -> dict:
  """Validates the source and returns statistics per CSV ("sources": valid, train); writes
  nothing. Unless labels_only, images are looked up (decoding them is the build's job)."""
  problems = problems or Problems()
  root = find_root(src)
  stats = {"name": CheXpert.name, "root": root, "sources": {}, "classes": list(CLASSES)}
  for name, path in _csv_paths(root).items():
    rows = read_csv(path, problems)
    missing = None if labels_only else count_missing(
        ((r.where, os.path.join(root, r.rel_path)) for r in rows), problems)
    stats["sources"][name] = {
        "rows": len(rows), "frontal": sum(r.frontal for r in rows),
        "lateral": sum(not r.frontal for r in rows),
        "patients": len({r.patient_id for r in rows}), "missing_images": missing,
        "labels": label_counts([r.raw for r in rows])}
  stats["not_found"] = [f for name, f in SPLIT_FILES.items() if name not in stats["sources"]]
  stats["skipped"] = problems.summary()
  return stats


def format_check(stats: dict) -> str:
  """`check`'s statistics (CheXpert's or MIMIC-CXR's) as a table, a column per source."""
  names = list(stats["sources"])
  lines = [f"{stats['name']}: {stats['root']}", " " * 24 + "".join(f"{n:>12}" for n in names)]
  for key in [k for k in stats["sources"][names[0]] if k != "labels"]:
    values = [stats["sources"][n].get(key) for n in names]
    lines.append(f"  {key.replace('_', ' '):<22}"
                 + "".join(f"{'-' if v is None else v:>12}" for v in values))
  group = 7 * len(COUNT_KEYS)
  lines += ["", " " * 30 + "".join(f"{n:>{group}}" for n in names),
            f"  {'label':<28}" + "".join(f"{k:>7}" for k in COUNT_KEYS) * len(names)]
  for c in stats["classes"]:
    counts = [stats["sources"][n]["labels"][c][k] for n in names for k in COUNT_KEYS]
    lines.append(f"  {c:<28}" + "".join(f"{v:>7}" for v in counts))
  if stats.get("not_found"):
    lines += ["", "  not found: " + ", ".join(stats["not_found"])]
  skipped = stats["skipped"]["counts"]
  if skipped:
    lines += ["", "  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))]
  return "\n".join(lines)


class CheXpert(Builder):
  """CheXpert v1.0(-small): train / val (by patient from train.csv) / test (valid.csv)."""

  name = "chexpert"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "TFDS array_record build; val carved from train.csv by patient "
                            "with sources.patient_split (sha256 ranking)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Register and download CheXpert-v1.0-small (about 11 GB; or the full CheXpert-v1.0) from the
  Stanford AIMI site,
  https://stanfordaimi.azurewebsites.net/datasets/8cbd9ed4-2eb9-4565-affc-111cf4f7ebe2, and
  unzip it, e.g. into data/raw, giving
    data/raw/CheXpert-v1.0-small/{train.csv,valid.csv,train/,valid/}
  Pass as --src the folder holding train.csv and valid.csv, or its parent (data/raw)."""
  HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/chexpert/"
  CITATION = """\
@inproceedings{irvin2019chexpert,
  title={CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author={Irvin, Jeremy and Rajpurkar, Pranav and Ko, Michael and Yu, Yifan and Ciurea-Ilcus, Silviana and Chute, Chris and Marklund, Henrik and Haghgoo, Behzad and Ball, Robyn and Shpanskaya, Katie and Seekins, Jayne and Mong, David A. and Halabi, Safwan S. and Sandberg, Jesse K. and Jones, Ricky and Larson, David B. and Langlotz, Curtis P. and Patel, Bhavik N. and Lungren, Matthew P. and Ng, Andrew Y.},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  volume={33}, pages={590--597}, year={2019}}"""
  DESCRIPTION = ("CheXpert chest radiographs with 14 observations labelled from the reports; "
                 "the official validation set is the test split.")
  CLASSES = CLASSES
  TASK = "multilabel"
  TEXT_POLICY = ("one sentence from Age, Sex, Frontal/Lateral and AP/PA (fixed vocabulary, "
                 "never a label)")
  EXTRA = {"view": tfds.features.Text(), "projection": tfds.features.Text(),
           "sex": tfds.features.Text(), "age": np.int32, "study": tfds.features.Text()}

  def __init__(self, *, policy: str | dict | None = None, frontal_only: bool = True,
               val_fraction: float = 0.1, seed: int = 0, **kwargs):
    self.policy = parse_policy(policy)
    self.frontal_only, self.val_fraction, self.seed = frontal_only, val_fraction, seed
    patient_split([], val_fraction, seed)       # a bad fraction fails before reading
    super().__init__(**kwargs)

  def source_files(self, src: str) -> list[str]:
    return list(_csv_paths(find_root(src)).values())

  def metadata(self) -> dict:
    return {**policy_metadata(self.policy, self.frontal_only), "test_split": "valid.csv",
            "val_split": {"from": "train.csv", "by": "patient", "fraction": self.val_fraction,
                          "seed": self.seed, "ranking": "sha256(f'{seed}/{patient_id}')"}}

  def read(self, src: str) -> dict[str, list[Example]]:
    root = find_root(src)
    paths = _csv_paths(root)
    if len(paths) < len(SPLIT_FILES):
      raise FileNotFoundError(f"{root}: a build needs both train.csv and valid.csv")
    rows = {name: read_csv(path, self.problems) for name, path in paths.items()}
    val = patient_split((r.patient_id for r in rows["train"]), self.val_fraction, self.seed)
    out = {"train": [], "val": [], "test": []}
    for name, r in ((name, r) for name, rs in rows.items() for r in rs):
      if r.frontal or not self.frontal_only:
        split = "test" if name == "valid" else "val" if r.patient_id in val else "train"
        out[split].append(self._example(root, r))
    if not out["test"]:
      raise BadInputError(f"{paths['valid']}: no {'frontal ' * self.frontal_only}images")
    return {split: examples for split, examples in out.items() if examples}   # no val at 0

  def _example(self, root: str, r: Row) -> Example:
    labels, mask = apply_policy(r.raw, self.policy)
    return Example(key=r.rel_path, where=r.where, image=os.path.join(root, r.rel_path),
                   text=r.text, labels=labels, label_mask=mask, patient_id=r.patient_id,
                   extra={"view": r.view, "projection": r.projection, "sex": r.sex,
                          "age": -1 if r.age is None else r.age, "study": r.study})
