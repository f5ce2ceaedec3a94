"""CheXpert v1.0(-small) as Stanford ships it, a TFDS builder; its label helpers serve MIMIC-CXR.

- Labels: 1 positive, 0 negative, -1 uncertain, blank = not mentioned in the report. Blank
  is negative (0, in the loss), as in the CheXpert paper: radiologists do not list absent
  findings. Uncertain follows its class's policy: `u_ones` (-> 1), `u_zeros` (-> 0) or
  `u_ignore` (label_mask False). The default `u_ignore` invents no label; the paper's best
  single-policy choices are `Atelectasis=u_ones,Edema=u_ones`.
- Frontal views only by default: the model classifies one image, as for ChestX-ray14 / MIMIC.
- Splits: the test set is not public, so the official `valid.csv` (234 images, a consensus
  of radiologists) is `test`; `val` is carved from all of `train.csv` by patient
  (`sources.patient_split`), so it does not depend on `frontal_only`.
- An image is found by the `<split>/patientN/studyM/<file>` tail of `Path`, whatever its prefix.
- Text: `sources.sentence` from age, sex and a fixed-vocabulary view phrase: no label word leaks.
"""

from __future__ import annotations

import contextlib
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
SPLIT_FILES = {"valid": "valid.csv", "train": "train.csv"}
POLICIES = ("u_ones", "u_zeros", "u_ignore")
DEFAULT_POLICY = "u_ignore"
BLANK_LABEL = 0.0
COUNT_KEYS = ("1", "0", "-1", "blank")
WRITTEN_KEYS = ("pos", "neg", "masked")     # labels as written: 1, 0, label_mask False
PROJECTIONS = ("AP", "PA", "LL", "RL")       # the only codes a sentence may carry
_PATH_TAIL = re.compile(r"([^/]+/(patient\d+)/(study\d+)/[^/]+)$")


def parse_label(text: str) -> float:
  """'1.0' / '0' / '-1.0' / '' -> 1.0 / 0.0 / -1.0 / nan; anything else is an error."""
  if not text.strip():
    return np.nan
  with contextlib.suppress(ValueError):
    if float(text) in (1.0, 0.0, -1.0):
      return float(text)
  raise ValueError(f"{text!r} is not a label (expected 1, 0, -1 or blank)")


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


def parse_policy(spec: str | dict | None = None) -> dict[str, str]:
  """'u_ones' | 'Atelectasis=u_ones,Edema=u_ones,default=u_ignore' | {class: policy} -> a
  policy for every class. Class names match case-insensitively, '_' standing for ' '."""
  if spec is None or isinstance(spec, str):
    spec = (spec or "").strip() or DEFAULT_POLICY
    parts = [p.strip() for p in ("default=" + spec if "=" not in spec else spec).split(",")]
    if bad := [p for p in parts if p and "=" not in p]:
      raise ValueError(f"policy {bad[0]!r}: expected CLASS=POLICY or default=POLICY")
    spec = dict(p.split("=", 1) for p in parts if p)
  by_name, chosen = {c.lower(): c for c in CLASSES + ("default",)}, {}
  for key, value in spec.items():
    policy = value.strip().lower().replace("-", "_")
    name = by_name.get(" ".join(key.replace("_", " ").split()).lower())
    if policy not in POLICIES:
      raise ValueError(f"uncertainty policy {value!r} for {key!r} is not one of {POLICIES}")
    if name is None:
      raise ValueError(f"policy names unknown class {key!r}; classes are {list(CLASSES)}")
    chosen[name] = policy
  return {c: chosen.get(c, chosen.get("default", DEFAULT_POLICY)) for c in CLASSES}


def apply_policy(raw: np.ndarray, policy: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
  """Raw (..., C) values in {1, 0, -1, nan} -> (labels float32, label_mask bool)."""
  raw = np.asarray(raw, np.float32)
  ones, ignore = (np.array([policy[c] == p for c in CLASSES]) for p in ("u_ones", "u_ignore"))
  labels = np.where(np.isnan(raw), BLANK_LABEL, (raw == 1) | (raw == -1) & ones)
  return labels.astype(np.float32), ~((raw == -1) & ignore)


def policy_metadata(policy: dict[str, str], frontal_only: bool) -> dict:
  return {"uncertainty_policy": policy, "blank_label": BLANK_LABEL,
          "views": "frontal" if frontal_only else "all"}


def label_counts(raws: list[np.ndarray]) -> dict[str, dict[str, int]]:
  raw = np.reshape(raws, (-1, len(CLASSES)))
  hits = dict(zip(COUNT_KEYS, (raw == 1, raw == 0, raw == -1, np.isnan(raw))))
  return {c: {k: int(h[:, i].sum()) for k, h in hits.items()} for i, c in enumerate(CLASSES)}


def written_counts(raws: list[np.ndarray], policy: dict[str, str]) -> dict[str, dict[str, int]]:
  """Per class, the labels a build writes from these raw rows under `policy`: positives,
  negatives and masked (left out of the loss), so that --check shows what training sees."""
  labels, mask = apply_policy(np.reshape(raws, (-1, len(CLASSES))), policy)
  hits = dict(zip(WRITTEN_KEYS, (mask & (labels == 1), mask & (labels == 0), ~mask)))
  return {c: {k: int(h[:, i].sum()) for k, h in hits.items()} for i, c in enumerate(CLASSES)}


def missing_images(images: Iterable[tuple[str, str]], problems: Problems) -> set[str]:
  """Looks (where, image path) up without decoding (the build decodes); reports the missing
  and returns their paths."""
  missing = set()
  for where, path in images:
    if not os.path.exists(path):
      problems.report("missing_image", where, f"{path}: no such image file")
      missing.add(path)
  return missing


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
  return next(filter(os.path.exists, (os.path.join(folder, name + gz) for gz in ("", ".gz"))), None)


def _csv_paths(root: str) -> dict[str, str]:
  return {name: find_file(root, f) for name, f in SPLIT_FILES.items() if find_file(root, f)}


def find_root(src: str) -> str:
  """The folder holding train.csv / valid.csv: `src` itself or `src/CheXpert-v1.0(-small)`."""
  candidates = [src] + [os.path.join(src, d) for d in ("CheXpert-v1.0-small", "CheXpert-v1.0")]
  for root in filter(_csv_paths, candidates):   # the first that holds one
    return root
  raise FileNotFoundError(f"--src {src!r}: no valid.csv or train.csv in any of {candidates}")


def read_csv(path: str, problems: Problems) -> list[Row]:
  """One CheXpert CSV -> rows; bad rows go to `problems` (raise, or count and skip)."""
  rows: dict[str, Row] = {}   # by Path tail, which must not repeat
  for where, v in csv_rows(path, META_COLUMNS + CLASSES):
    tail = _PATH_TAIL.search(v.get("Path", "").strip().replace("\\", "/"))
    age = np.nan
    with contextlib.suppress(ValueError):
      age = float(v.get("Age", "").strip() or 0)   # the release writes 0 (or blank) for unknown
    problem = None
    if "_error" in v:
      problem = v["_error"]
    elif not tail:
      problem = f"Path {v['Path']!r} does not end in <split>/patientN/studyM/<file>"
    elif tail[1] in rows:
      problem = f"Path {v['Path']!r} repeats {rows[tail[1]].where.rsplit(', ', 1)[1]}"
    elif v["Frontal/Lateral"].strip().lower() not in ("frontal", "lateral"):
      problem = f"Frontal/Lateral is {v['Frontal/Lateral']!r} (expected Frontal or Lateral)"
    elif v["Sex"].strip().lower() not in ("male", "female", "unknown", ""):
      problem = f"Sex is {v['Sex']!r} (expected Male, Female, Unknown or blank)"
    elif not 0 <= age <= 150:       # also nan
      problem = f"Age is {v['Age']!r} (expected a number of years)"
    elif (raw := parse_labels(v, where, problems)) is not None:   # None: a bad label, reported
      rows[tail[1]] = Row(where, tail[1], tail[2], f"{tail[2]}/{tail[3]}", v["Sex"].strip(),
                          int(age) or None, v["Frontal/Lateral"].strip(), v["AP/PA"].strip(), raw)
    if problem:
      problems.report("bad_row", where, problem)
  return list(rows.values())


def check(src: str, labels_only: bool = False, problems: Problems | None = None,
          policy: str | dict | None = None, frontal_only: bool = True) -> dict:
  """Statistics per CSV ("sources"), raw and as a build with `policy` and `frontal_only`
  writes them ("written", "written_labels"; rows with a missing image left out unless
  labels_only, unreadable ones are found by the build only); writes nothing."""
  problems, policy = problems or Problems(), parse_policy(policy)
  root = find_root(src)
  paths, sources = _csv_paths(root), {}
  for name, path in paths.items():
    rows = read_csv(path, problems)
    missing = set() if labels_only else missing_images(
        ((r.where, os.path.join(root, r.rel_path)) for r in rows), problems)
    written = [r for r in rows if (r.frontal or not frontal_only)
               and os.path.join(root, r.rel_path) not in missing]
    frontal = sum(r.frontal for r in rows)
    sources[name] = {"rows": len(rows), "frontal": frontal, "lateral": len(rows) - frontal,
                     "patients": len({r.patient_id for r in rows}),
                     "missing_images": None if labels_only else len(missing),
                     "written": len(written), "labels": label_counts([r.raw for r in rows]),
                     "written_labels": written_counts([r.raw for r in written], policy)}
  return {"name": CheXpert.name, "root": root, "sources": sources, "classes": list(CLASSES),
          **policy_metadata(policy, frontal_only),
          "not_found": [f for name, f in SPLIT_FILES.items() if name not in paths],
          "skipped": problems.summary()}


def format_check(stats: dict) -> str:
  """`check`'s statistics (CheXpert's or MIMIC-CXR's) as tables, a column per source: the
  raw label counts beside the labels written under the policy shown per class."""
  sources, names = stats["sources"], list(stats["sources"])
  policy, counts = stats["uncertainty_policy"], ("labels", "written_labels")
  lines = [f"{stats['name']}: {stats['root']}",
           f"  written: {stats['views']} views; -1 per the policy column, blank -> "
           f"{'negative' if stats['blank_label'] == 0 else stats['blank_label']}",
           " " * 24 + "".join(f"{n:>12}" for n in names)]
  for key in [k for k in sources[names[0]] if k not in counts]:
    values = ["-" if sources[n].get(key) is None else sources[n][key] for n in names]
    lines.append(f"  {key.replace('_', ' '):<22}" + "".join(f"{v:>12}" for v in values))
  width = [7 * len(COUNT_KEYS), 7 * len(WRITTEN_KEYS)]
  lines += ["", " " * 40 + "".join(f"{n + ' raw':>{width[0]}}{n + ' written':>{width[1]}}"
                                   for n in names),
            f"  {'label':<28}{'policy':<10}" + "".join(
                f"{k:>7}" for k in COUNT_KEYS + WRITTEN_KEYS) * len(names)]
  lines += [f"  {c:<28}{policy[c]:<10}" + "".join(
      f"{sources[n][key][c][k]:>7}" for n in names
      for key, keys in zip(counts, (COUNT_KEYS, WRITTEN_KEYS)) for k in keys)
      for c in stats["classes"]]
  skipped = [f"{k} {v}" for k, v in sorted(stats["skipped"]["counts"].items())]
  for title, items in (("not found", stats.get("not_found")), ("skipped", skipped)):
    if items:
      lines += ["", f"  {title}: " + ", ".join(items)]
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
        labels, mask = apply_policy(r.raw, self.policy)
        split = "test" if name == "valid" else "val" if r.patient_id in val else "train"
        out[split].append(Example(
            key=r.rel_path, where=r.where, image=os.path.join(root, r.rel_path), text=r.text,
            labels=labels, label_mask=mask, patient_id=r.patient_id,
            extra={"view": r.view, "projection": r.projection, "sex": r.sex,
                   "age": -1 if r.age is None else r.age, "study": r.study}))
    if not out["test"]:
      raise BadInputError(f"{paths['valid']}: no {'frontal ' * self.frontal_only}images")
    return {split: examples for split, examples in out.items() if examples}   # no val at 0
