"""CheXpert v1.0 (or -small) as Stanford ships it -> the project's record format.

Layout: `CheXpert-v1.0(-small)/{train,valid}.csv` with header
`Path,Sex,Age,Frontal/Lateral,AP/PA,<14 observations>` and `Path` values like
`CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg`. The image is found from
the `train|valid/patientN/...` tail of `Path`, so any prefix (the release folder name, a
local absolute path) is ignored.

Decisions:
- Labels: 1 positive, 0 negative, -1 uncertain, blank = not mentioned in the report. Blank
  is read as negative (0, counted in the loss), as in the CheXpert paper and most work on
  it: the labeler leaves an observation blank when the report does not mention it, and a
  radiologist does not list absent findings one by one. Uncertain follows the policy of its
  class: `u_ones` (-> 1), `u_zeros` (-> 0) or `u_ignore` (label_mask False, left out of the
  loss). The default is `u_ignore` everywhere: it invents no label; the CheXpert paper's
  best single-policy choices are `Atelectasis=u_ones,Edema=u_ones`.
- Frontal views only by default: the model classifies one image, lateral views carry
  findings a single lateral image rarely shows alone, and ChestX-ray14 / MIMIC runs here use
  frontal images too. `frontal_only=False` keeps laterals.
- Splits: CheXpert's test set is not public, so the official `valid.csv` (234 images, a
  consensus of radiologists) is the test split; `val` is carved from `train.csv` by patient
  (a seeded permutation of the sorted patient ids), so no patient is in both.
- Text: a sentence from age, sex and view only ("A 68-year-old female patient, frontal AP
  view."), built from a fixed vocabulary so that no label word can reach the text stream.
- Rows are numbered as a spreadsheet shows them: the header is row 1.
"""

from __future__ import annotations

import concurrent.futures
import csv
import glob
import gzip
import io
import math
import os
import re
import struct
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from medvlmoe_jax.data import records
from medvlmoe_jax.data.preprocess import load_image, resize_and_crop
from medvlmoe_jax.data.prep import BadInputError, Problems

NAME = "chexpert"
CLASSES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
           "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
           "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
RELEASE_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
POLICIES = ("u_ones", "u_zeros", "u_ignore")
DEFAULT_POLICY = "u_ignore"
BLANK_LABEL = 0.0
TEXT_POLICY = ("one sentence from Age, Sex, Frontal/Lateral and AP/PA (fixed vocabulary, "
               "never a label)")
SPLIT_FILES = (("valid", "valid.csv"), ("train", "train.csv"))
COUNT_KEYS = ("1", "0", "-1", "blank")

_LABEL_VALUES = (1.0, 0.0, -1.0)


# ---------------------------------------------------------------------------- labels

def _norm_name(name: str) -> str:
  return " ".join(name.replace("_", " ").split()).lower()


def parse_label(text: str) -> float:
  """'1.0' / '0' / '-1.0' / '' -> 1.0 / 0.0 / -1.0 / nan; anything else is an error."""
  text = text.strip()
  if not text:
    return math.nan
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"{text!r} is not a label (expected 1, 0, -1 or blank)") from None
  if value not in _LABEL_VALUES:
    raise ValueError(f"{text!r} is not a label (expected 1, 0, -1 or blank)")
  return value


def parse_policy(spec=None, classes=CLASSES) -> dict[str, str]:
  """'u_ones' | 'Atelectasis=u_ones,Edema=u_ones,default=u_ignore' | {class: policy} ->
  a policy for every class. Class names match case-insensitively, '_' standing for ' '."""
  if spec is None or (isinstance(spec, str) and not spec.strip()):
    spec = DEFAULT_POLICY
  if isinstance(spec, str):
    if "=" not in spec:
      spec = {"default": spec}
    else:
      pairs = {}
      for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
          raise ValueError(f"policy {part!r}: expected CLASS=POLICY or default=POLICY")
        pairs[key.strip()] = value.strip()
      spec = pairs
  by_norm = {_norm_name(c): c for c in classes}
  default, chosen = DEFAULT_POLICY, {}
  for key, value in spec.items():
    policy = value.strip().lower().replace("-", "_")
    if policy not in POLICIES:
      raise ValueError(f"uncertainty policy {value!r} for {key!r} is not one of {POLICIES}")
    if _norm_name(key) == "default":
      default = policy
    elif _norm_name(key) in by_norm:
      chosen[by_norm[_norm_name(key)]] = policy
    else:
      raise ValueError(f"policy names unknown class {key!r}; classes are {list(classes)}")
  return {c: chosen.get(c, default) for c in classes}


def apply_policy(raw: np.ndarray, policy: dict[str, str], classes=CLASSES):
  """Raw (..., C) values in {1, 0, -1, nan} -> (labels float32, label_mask bool)."""
  raw = np.asarray(raw, np.float32)
  per_class = [policy[c] for c in classes]
  ones = np.array([p == "u_ones" for p in per_class])
  ignore = np.array([p == "u_ignore" for p in per_class])
  uncertain = raw == -1
  labels = np.where(raw == 1, 1.0, np.where(np.isnan(raw), BLANK_LABEL, 0.0))
  labels = np.where(uncertain & ones, 1.0, labels).astype(np.float32)
  mask = ~(uncertain & ignore)
  return labels, mask


def label_counts(raw: np.ndarray, classes=CLASSES) -> dict[str, dict[str, int]]:
  raw = np.asarray(raw, np.float32).reshape(-1, len(classes))
  return {c: {"1": int(np.sum(raw[:, i] == 1)), "0": int(np.sum(raw[:, i] == 0)),
              "-1": int(np.sum(raw[:, i] == -1)), "blank": int(np.sum(np.isnan(raw[:, i])))}
          for i, c in enumerate(classes)}


# ---------------------------------------------------------------------------- text

_SEX = {"male": "male", "female": "female", "unknown": "", "": ""}
_VIEW = {"frontal": "frontal", "lateral": "lateral"}


def sentence(sex: str = "", age: int | None = None, view: str = "", projection: str = "") -> str:
  """'A 68-year-old female patient, frontal AP view.' (parts that are unknown are left out)."""
  words = ["A"]
  if age:
    age = int(age)
    if str(age).startswith("8") or age in (11, 18):   # "an eighty-...", "an eleven-..."
      words = ["An"]
    words.append(f"{age}-year-old")
  if _SEX.get(sex.strip().lower()):
    words.append(_SEX[sex.strip().lower()])
  words.append("patient")
  view_words = [w for w in (_VIEW.get(view.strip().lower(), ""), _projection(projection)) if w]
  text = " ".join(words)
  if view_words:
    text += ", " + " ".join(view_words) + " view"
  return text + "."


def _projection(code: str) -> str:
  """A short upper-case code (AP, PA, LL, RL) is kept; free text never is."""
  code = code.strip().upper()
  return code if re.fullmatch(r"[A-Z]{2,3}", code) else ""


# ---------------------------------------------------------------------------- CSV reading

class Row(NamedTuple):
  where: str            # "file, row N", for error messages
  rel_path: str         # train|valid/patientN/studyM/viewK_*.jpg, relative to the root
  patient_id: str
  sex: str
  age: int | None
  view: str             # "Frontal" | "Lateral"
  projection: str
  raw: np.ndarray       # (C,) float32 in {1, 0, -1, nan}

  @property
  def frontal(self) -> bool:
    return self.view.lower() == "frontal"

  @property
  def text(self) -> str:
    return sentence(self.sex, self.age, self.view, self.projection)


def find_root(src: str) -> str:
  """The folder holding train.csv / valid.csv: `src` itself or `src/CheXpert-v1.0(-small)`."""
  candidates = [src] + [os.path.join(src, d) for d in RELEASE_DIRS]
  for root in candidates:
    if any(os.path.exists(os.path.join(root, f)) for _, f in SPLIT_FILES):
      return root
  raise FileNotFoundError(f"--src {src!r}: no valid.csv or train.csv in any of {candidates}")


def image_rel_path(path: str) -> str | None:
  """`.../valid/patient64541/study1/view1_frontal.jpg` -> 'valid/patient64541/...' (None if
  the path has no patientN folder)."""
  parts = [p for p in path.replace("\\", "/").split("/") if p]
  for i, part in enumerate(parts):
    if re.fullmatch(r"patient\d+", part) and 0 < i < len(parts) - 1:
      return "/".join(parts[i - 1:])
  return None


def open_text(path: str):
  """A CSV, gzipped or not, as text."""
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
  return open(path, encoding="utf-8", newline="")


def csv_rows(path: str, required: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
  """Yields ("file, row N", {column: value}) per data row; a row with the wrong number of
  columns is yielded with an empty dict so that the caller reports it in order."""
  with open_text(path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise BadInputError(f"{path}, row 1: empty file (expected a header)")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
      raise BadInputError(f"{path}, row 1: header lacks column(s) {missing}; got {header}")
    for row in reader:
      where = f"{path}, row {reader.line_num}"
      if not row or (len(row) == 1 and not row[0].strip()):
        continue   # blank line (a trailing newline)
      if len(row) != len(header):
        yield where, {"_error": f"{len(row)} columns, the header has {len(header)}"}
        continue
      yield where, dict(zip(header, row))


def parse_labels(values: dict[str, str], where: str, problems: Problems,
                 classes=CLASSES) -> np.ndarray | None:
  raw = np.empty(len(classes), np.float32)
  for i, c in enumerate(classes):
    try:
      raw[i] = parse_label(values[c])
    except ValueError as e:
      problems.report("bad_label", where, f"column {c!r}: {e}")
      return None
  return raw


def read_csv(path: str, problems: Problems) -> list[Row]:
  """One CheXpert CSV -> rows; bad rows go to `problems` (raise, or skip and count)."""
  rows = []
  for where, values in csv_rows(path, META_COLUMNS + CLASSES):
    if "_error" in values:
      problems.report("bad_row", where, values["_error"])
      continue
    rel = image_rel_path(values["Path"])
    if rel is None:
      problems.report("bad_row", where, f"Path {values['Path']!r} has no patientN folder")
      continue
    view = values["Frontal/Lateral"].strip()
    if view.lower() not in _VIEW:
      problems.report("bad_row", where, f"Frontal/Lateral is {view!r} (expected Frontal or "
                      "Lateral)")
      continue
    if values["Sex"].strip().lower() not in _SEX:
      problems.report("bad_row", where, f"Sex is {values['Sex']!r} (expected Male, Female, "
                      "Unknown or blank)")
      continue
    age = _parse_age(values["Age"])
    if age == -1:
      problems.report("bad_row", where, f"Age is {values['Age']!r} (expected a number)")
      continue
    raw = parse_labels(values, where, problems)
    if raw is None:
      continue
    rows.append(Row(where, rel, rel.split("/")[1], values["Sex"].strip(), age, view,
                    values["AP/PA"].strip(), raw))
  return rows


def _parse_age(text: str) -> int | None:
  """None when unknown (blank or 0, how the release marks a missing age); -1 when invalid."""
  text = text.strip()
  if not text:
    return None
  try:
    age = float(text)
  except ValueError:
    return -1
  if not math.isfinite(age) or age < 0 or age > 150:
    return -1
  return int(age) or None


# ---------------------------------------------------------------------------- splits

def patient_split(patients: Iterable[str], val_fraction: float, seed: int) -> set[str]:
  """The patients that go to `val`: a seeded permutation of the sorted ids, so the same
  data and seed always give the same split."""
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction={val_fraction} is not in [0, 1)")
  unique = sorted(set(patients))
  n_val = int(round(val_fraction * len(unique)))
  if val_fraction > 0 and len(unique) > 1:
    n_val = min(max(n_val, 1), len(unique) - 1)
  order = np.random.default_rng(seed).permutation(len(unique))
  return {unique[i] for i in order[:n_val]}


# ---------------------------------------------------------------------------- writing

class Item(NamedTuple):
  """One example to write: where it came from (for errors) and what goes in the record."""
  where: str
  image_path: str
  text: str
  labels: np.ndarray
  label_mask: np.ndarray
  patient_id: str
  example_id: str


def _encode(item: Item, image_size: int):
  try:
    image = load_image(item.image_path)
  except FileNotFoundError as e:
    return "missing_image", str(e)
  except ValueError as e:
    return "bad_image", str(e)
  return records.encode_example(resize_and_crop(image, image_size), item.text, item.labels,
                                item.label_mask, item.patient_id, item.example_id)


def write_images_split(out: str, split: str, items: list[Item], image_size: int,
                       problems: Problems, num_workers: int | None = None) -> dict:
  """Decodes, resizes and writes `items` in order; unreadable images go to `problems`.

  Images are decoded in threads (PIL releases the GIL). Since a bad image is only found by
  decoding it, examples are spooled to a temporary file first and then written with their
  exact count. Shared with MIMIC-CXR.
  """
  os.makedirs(out, exist_ok=True)
  for old in glob.glob(os.path.join(glob.escape(out), f"{split}-?????-of-?????.array_record")):
    os.remove(old)
  spool = os.path.join(out, f".{split}.spool")
  workers = num_workers or min(16, os.cpu_count() or 1)
  count, patients = 0, set()
  try:
    with open(spool, "wb") as f, concurrent.futures.ThreadPoolExecutor(workers) as pool:
      chunk = 64 * workers
      for start in range(0, len(items), chunk):
        batch = items[start:start + chunk]
        for item, result in zip(batch, pool.map(_encode, batch, [image_size] * len(batch))):
          if isinstance(result, tuple):
            problems.report(result[0], item.where, result[1])
            continue
          f.write(struct.pack("<Q", len(result)))
          f.write(result)
          count += 1
          patients.add(item.patient_id)
    files = records.write_split(out, split, _read_spool(spool), count)
  finally:
    if os.path.exists(spool):
      os.remove(spool)
  return {"num_examples": count, "files": files, "num_patients": len(patients)}


def _read_spool(path: str) -> Iterator[bytes]:
  with open(path, "rb") as f:
    while header := f.read(8):
      yield f.read(struct.unpack("<Q", header)[0])


# ---------------------------------------------------------------------------- check / prepare

def _csv_paths(root: str) -> dict[str, str]:
  return {name: os.path.join(root, f) for name, f in SPLIT_FILES
          if os.path.exists(os.path.join(root, f))}


def check(src: str, labels_only: bool = False, problems: Problems | None = None) -> dict:
  """Validates the source and returns statistics per CSV ("sources": valid, train); writes
  nothing. Bad rows and, unless labels_only, missing images go to `problems` (images are
  only looked up here: decoding every one is `prepare`'s job)."""
  problems = problems or Problems()
  root = find_root(src)
  stats = {"name": NAME, "root": root, "sources": {}, "classes": list(CLASSES)}
  for name, path in _csv_paths(root).items():
    rows = read_csv(path, problems)
    missing = None
    if not labels_only:
      missing = 0
      for row in rows:
        image = os.path.join(root, row.rel_path)
        if not os.path.exists(image):
          missing += 1
          problems.report("missing_image", row.where, f"{image}: no such image file")
    stats["sources"][name] = {
        "rows": len(rows), "frontal": sum(r.frontal for r in rows),
        "lateral": sum(not r.frontal for r in rows),
        "patients": len({r.patient_id for r in rows}), "missing_images": missing,
        "labels": label_counts(np.stack([r.raw for r in rows]) if rows else
                               np.zeros((0, len(CLASSES)), np.float32))}
  stats["not_found"] = [f for name, f in SPLIT_FILES if name not in stats["sources"]]
  stats["skipped"] = problems.summary()
  return stats


def prepare(src: str, out: str, image_size: int = 224, problems: Problems | None = None,
            policy=DEFAULT_POLICY, frontal_only: bool = True, val_fraction: float = 0.1,
            seed: int = 0, num_workers: int | None = None) -> dict:
  """Writes train / val / test records and manifest.json into `out`; returns the manifest."""
  problems = problems or Problems()
  policy = parse_policy(policy)
  root = find_root(src)
  paths = _csv_paths(root)
  for name, f in SPLIT_FILES:
    if name not in paths:
      raise FileNotFoundError(f"{os.path.join(root, f)}: not found (prepare needs both "
                              "train.csv and valid.csv)")
  rows = {name: read_csv(path, problems) for name, path in paths.items()}
  if frontal_only:
    rows = {name: [r for r in rs if r.frontal] for name, rs in rows.items()}
  val_patients = patient_split((r.patient_id for r in rows["train"]), val_fraction, seed)
  by_split = {"train": [r for r in rows["train"] if r.patient_id not in val_patients],
              "val": [r for r in rows["train"] if r.patient_id in val_patients],
              "test": rows["valid"]}
  splits = {}
  for split, split_rows in by_split.items():
    items = []
    for r in split_rows:
      labels, mask = apply_policy(r.raw, policy)
      items.append(Item(r.where, os.path.join(root, r.rel_path), r.text, labels, mask,
                        r.patient_id, r.rel_path))
    splits[split] = write_images_split(out, split, items, image_size, problems, num_workers)
  manifest = {
      "name": NAME, "task": "multilabel", "classes": list(CLASSES), "image_size": image_size,
      "text_policy": TEXT_POLICY, "uncertainty_policy": policy,
      "blank_label": BLANK_LABEL, "views": "frontal" if frontal_only else "all",
      "val_split": {"from": "train.csv", "by": "patient", "fraction": val_fraction,
                    "seed": seed},
      "splits": splits, "skipped": problems.summary(),
      "source_checksums": {os.path.basename(p): records.file_checksum(p)
                           for p in paths.values()}}
  records.write_manifest(out, manifest)
  return manifest


# ---------------------------------------------------------------------------- printing

def format_check(stats: dict) -> str:
  """The statistics `check` returns, as a table (a column, or a column group, per source)."""
  names = list(stats["sources"])
  lines = [f"{stats['name']}: {stats['root']}"]
  if not names:
    return "\n".join(lines + ["  no label files found"])
  keys = [k for k in stats["sources"][names[0]] if k != "labels"]
  lines.append(" " * 24 + "".join(f"{n:>12}" for n in names))
  for key in keys:
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
  skipped = stats.get("skipped", {}).get("counts")
  if skipped:
    lines += ["", "  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))]
  return "\n".join(lines)
