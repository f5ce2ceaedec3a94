"""NIH ChestX-ray14 as a TFDS builder, read from the folder as NIH ships it.

The label table (v2020 preferred: it fixes the 2017 table's implausible ages) and the split
lists are cross-checked before any image is touched: every listed image must be a valid row, in
one list only, and no patient may be in two lists, since a shared patient would leak into the
test score. A row's Patient ID must be the patient of its image name (PPPPPPPP_NNN.png): the
patient check rests on that column, and a wrong one would hide a shared patient. A row dropped
as bad (skip_bad) is also dropped from the lists rather than reported a second time there.
The lists are NIH's train_val / test, val carved from train_val by patient with
`sources.patient_split`, or published train / [val /] test lists (`split_lists`, e.g.
CheXNet's), taken as given.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.data.builder import Builder, Example, decoded
from medvlmoe_jax.data.preprocess import load_image
from medvlmoe_jax.data.sources import Problems, csv_rows, patient_split, sentence

CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
           "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
           "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz",
             "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz")
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
MAX_AGE = 120
SPLITS = ("train", "val", "test")   # the splits `split_lists` may give, in this order

_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
             "View Position")
# An NIH image name: the patient id (8 digits as released), then the patient's image number.
_NAME_RE = re.compile(r"([0-9]+)_[0-9]+\.png")
# Ages as written in the releases: "58", and in the oldest table "058Y" / "003M" / "010D".
_AGE_RE = re.compile(r"^\s*(\d{1,4})\s*([YyMmWwDd]?)\s*$")
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
# Fixed vocabularies: whatever the CSV holds, no free text reaches the sentence or features.
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
_VIEW = {"PA": "PA view", "AP": "AP view", **dict.fromkeys(("LL", "RL", "LATERAL"), "lateral view")}
_OVERLAP_PAIRS = (("train_val", "test"), ("train", "val"), ("train", "test"), ("val", "test"))


def parse_age(raw: str) -> int | None:
  """Years, or None where missing or implausible: the 2017 table has typos like 411, and
  guessing a correction would invent data."""
  match = _AGE_RE.match(str(raw))
  years = int(int(match[1]) * _AGE_UNIT_YEARS[match[2].upper()]) if match else None
  return years if years is not None and years <= MAX_AGE else None


def describe(age: str, sex: str, view: str) -> tuple[str, dict]:
  """(the sentence, the extra features) of one row, from the fixed vocabularies only."""
  years, sex, view = parse_age(age), _SEX.get(sex.strip().upper(), ""), view.strip().upper()
  return sentence(years, sex, _VIEW.get(view, "")), {
      "view": view if view in _VIEW else "", "sex": sex, "age": -1 if years is None else years}


@dataclasses.dataclass
class Source:
  """The validated table (rows by image name, image not yet located) and split lists."""
  files: tuple[str, ...]          # CSV, then the split lists
  rows: dict[str, Example]
  lists: dict[str, list[str]]     # split -> names in list order: train_val, test or `split_lists`
  unlisted: int = 0               # valid rows in no list
  unknown_age: int = 0            # valid rows of unknown or implausible age

  @property
  def listed(self) -> list[str]:
    return [n for names in self.lists.values() for n in names]

  def patients(self, names) -> set[str]:
    return {self.rows[n].patient_id for n in names}

  def splits(self, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """The lists, and where they are NIH's, train / val carved from train_val by patient."""
    if "train_val" not in self.lists:
      return dict(self.lists)
    train_val = self.lists["train_val"]
    val = patient_split(self.patients(train_val), val_fraction, seed)
    return {**self.lists, "train": [n for n in train_val if self.rows[n].patient_id not in val],
            "val": [n for n in train_val if self.rows[n].patient_id in val]}


def parse_split_lists(value: str | dict | None) -> dict[str, str] | None:
  """{split: path}, in SPLITS order, from 'train=PATH,val=PATH,test=PATH' (or such a dict);
  train and test are required, val is optional."""
  if not value:
    return None
  pairs = list(value.items()) if isinstance(value, dict) else [
      tuple(map(str.strip, item.partition("=")[::2])) for item in value.split(",")]
  lists = dict(pairs)
  if (len(lists) < len(pairs) or not {"train", "test"} <= lists.keys() <= set(SPLITS)
      or not all(lists.values())):
    raise ValueError(f"--split_lists {value!r}: expected train=PATH,test=PATH[,val=PATH], "
                     "each split once")
  return {s: lists[s] for s in SPLITS if s in lists}


def find_files(src: str, split_lists: dict[str, str] | None = None
               ) -> tuple[str, dict[str, str]]:
  """(CSV, {split: list}): NIH's train_val / test lists unless `split_lists` are given; a
  missing file is fatal, not skippable."""
  if not os.path.isdir(src):
    raise FileNotFoundError(f"--src {src!r}: no such directory")
  found = [os.path.join(src, n) for n in CSV_NAMES if os.path.exists(os.path.join(src, n))]
  if not found:
    raise FileNotFoundError(f"{src}: none of {', '.join(CSV_NAMES)} (the NIH label table)")
  lists = split_lists or {"train_val": os.path.join(src, TRAIN_VAL_LIST),
                          "test": os.path.join(src, TEST_LIST)}
  for path in lists.values():
    if not os.path.exists(path):
      raise FileNotFoundError(f"--split_lists: no {path}" if split_lists else
                              f"{src}: no {os.path.basename(path)} (the official split list)")
  return found[0], lists


def _label_names(labels) -> str:
  """'Cardiomegaly|Emphysema' of 14 0 / 1 values (numbers or strings), as the table writes it."""
  return "|".join(c for c, y in zip(CLASSES, labels) if float(y)) or NO_FINDING


def read_table(path: str, problems: Problems) -> tuple[dict[str, Example], set[str]]:
  """({name: example} of the valid rows, names of the rows dropped as bad)."""
  rows, dropped = {}, set()
  for where, row in csv_rows(path, _REQUIRED):
    name = row.get("_first") if "_error" in row else row["Image Index"].strip()
    patient, field = row.get("Patient ID", "").strip(), row.get("Finding Labels", "")
    labels = [n.strip() for n in field.split("|")]
    unknown = [n for n in labels if n not in CLASSES + (NO_FINDING,)]
    named = _NAME_RE.fullmatch(name or "")
    if "_error" in row or not name:   # bad: (kind, message), in the order they are checked
      bad = "malformed_row", row.get("_error", "empty Image Index")
    elif name in rows:
      bad = "duplicate_row", f"{name} already given in {rows[name].where.rsplit(', ', 1)[1]}"
    elif not patient:
      bad = "malformed_row", f"{name}: empty Patient ID"
    elif not named:
      bad = "patient_mismatch", (f"{name}: not an NIH image name <patient>_<n>.png, so its "
                                 f"Patient ID {patient} cannot be checked")
    elif not (patient.isascii() and patient.isdigit()):
      bad = "patient_mismatch", f"{name}: Patient ID {patient!r} is not a number"
    elif int(named[1]) != int(patient):
      bad = "patient_mismatch", (f"{name}: Patient ID {patient} is not patient {int(named[1])} "
                                 "of the image name")
    elif not field.strip():
      bad = "unknown_label", f"{name}: empty Finding Labels"
    elif NO_FINDING in labels and len(labels) > 1:
      bad = "unknown_label", f"{name}: {NO_FINDING!r} together with other labels in {field!r}"
    elif unknown:
      bad = "unknown_label", (f"{name}: unknown label {unknown[0]!r} in Finding Labels {field!r} "
                              f"(known: {', '.join(CLASSES)}, {NO_FINDING})")
    else:
      text, extra = describe(row["Patient Age"], row["Patient Gender"], row["View Position"])
      rows[name] = Example(key=name, where=where, image="", text=text, extra=extra,
                           labels=np.isin(CLASSES, labels).astype(np.float32),
                           label_mask=np.ones(len(CLASSES), bool), patient_id=str(int(patient)))
      continue
    problems.report(bad[0], where, bad[1])
    dropped.add(name)
  return rows, dropped - rows.keys() - {""}   # a valid row of the name (a duplicate's first) stays


def read_list(path: str, rows: dict[str, Example], dropped: set[str], problems: Problems
              ) -> dict[str, int]:
  """{name: line} of a split list, in list order. A line is an image name or path, optionally
  followed by the 14 labels as 0 / 1 in CLASSES order (CheXNet's lists): these must be the
  table's, since a list made from another table version would silently relabel images."""
  seen: dict[str, int] = {}
  with open(path, encoding="utf-8-sig") as f:
    for line_no, fields in enumerate(map(str.split, f), 1):
      name, columns = os.path.basename(fields[0]) if fields else "", fields[1:]
      where = f"{path}, line {line_no}"
      if not name or name in dropped:
        continue
      if name not in rows:
        problems.report("unknown_image_in_split", where, f"{name} is not a row of the label table")
      elif name in seen:
        problems.report("duplicate_in_split", where, f"{name} already listed on line {seen[name]}")
      elif columns and (len(columns) != len(CLASSES) or set(columns) - {"0", "1"}):
        problems.report("malformed_split_line", where,
                        f"{name}: label columns {' '.join(columns)!r}; expected none or "
                        f"{len(CLASSES)} of 0 / 1 ({', '.join(CLASSES)})")
      elif columns and not np.array_equal(np.asarray(columns, np.float32), rows[name].labels):
        problems.report("label_mismatch", where, f"{name}: labels {' '.join(columns)} "
                        f"({_label_names(columns)}) differ from the table's "
                        f"{_label_names(rows[name].labels)} ({rows[name].where})")
      else:
        seen[name] = line_no
  return seen


def disjoint(lists: dict[str, dict[str, int]], paths: dict[str, str], rows: dict[str, Example],
             problems: Problems) -> dict[str, list[str]]:
  """{split: names}: an image, then a patient, found in a later list too is reported at the
  earlier list's line and (skip_bad) left to the last list that has it: the test list wins."""
  order = list(lists)
  for i, a in enumerate(order):
    owner = {n: b for b in order[i + 1:] for n in lists[b]}   # the last list wins
    for name in [n for n in lists[a] if n in owner]:
      problems.report("image_in_both_splits", f"{paths[a]}, line {lists[a][name]}",
                      f"{name} is also on line {lists[owner[name]][name]} of "
                      f"{os.path.basename(paths[owner[name]])}; with --skip_bad the "
                      f"{owner[name]} list keeps it")
      del lists[a][name]
  for i, a in enumerate(order):
    owner = {rows[n].patient_id: b for b in order[i + 1:] for n in lists[b]}
    shared: dict[str, list[str]] = {}   # patient -> their images in list a, in list order
    for name in (n for n in lists[a] if rows[n].patient_id in owner):
      shared.setdefault(rows[name].patient_id, []).append(name)
    for pid, names in shared.items():
      problems.report("patient_in_both_splits", f"{paths[a]}, line {lists[a][names[0]]}",
                      f"patient {pid} ({names[0]}) also has images in "
                      f"{os.path.basename(paths[owner[pid]])}; with --skip_bad the "
                      f"{len(names)} {a} image(s) of the patient are dropped")
    lists[a] = {n: line for n, line in lists[a].items() if rows[n].patient_id not in shared}
  return {s: list(names) for s, names in lists.items()}


def read_source(src: str, problems: Problems, split_lists: dict[str, str] | None = None
                ) -> Source:
  """The table and the split lists (NIH's, or `split_lists`), cross-checked; images are not
  touched."""
  table, paths = find_files(src, split_lists)
  rows, dropped = read_table(table, problems)
  lists = disjoint({s: read_list(p, rows, dropped, problems) for s, p in paths.items()},
                   paths, rows, problems)
  listed = {n for names in lists.values() for n in names}
  return Source((table, *paths.values()), rows, lists, unlisted=len(rows.keys() - listed),
                unknown_age=sum(ex.extra["age"] < 0 for ex in rows.values()))


def located(source: Source, names: list[str], src: str, problems: Problems) -> dict[str, Example]:
  """{name: example} of the `names` whose image file is found; a missing one is reported."""
  kaggle = sorted(glob.glob(os.path.join(src, "images_*")))
  dirs = [os.path.join(src, "images")] + [p for d in kaggle for p in (os.path.join(d, "images"), d)]
  index = {e.name: e.path for d in filter(os.path.isdir, reversed(dirs))   # the first dir wins
           for e in os.scandir(d) if e.is_file()}
  for name in (n for n in names if n not in index):
    problems.report("missing_image", source.rows[name].where, f"image {name} not found "
                    "under images/, images_NNN/images/ or images_NNN/")
  return {n: dataclasses.replace(source.rows[n], image=index[n]) for n in names if n in index}


def check(src: str, labels_only: bool = False, problems: Problems | None = None,
          val_fraction: float = 0.1, seed: int = 0, num_workers: int | None = None,
          split_lists: str | dict | None = None) -> dict:
  """Validates the source and returns split / patient / label statistics; writes nothing."""
  problems, split_lists = problems or Problems(), parse_split_lists(split_lists)
  source = read_source(src, problems, split_lists)
  splits = source.splits(val_fraction, seed)
  labels = {s: np.reshape([source.rows[n].labels for n in names], (-1, len(CLASSES)))
            for s, names in {**splits, "total": source.listed}.items()}
  patients = {s: source.patients(names) for s, names in splits.items()}
  overlap = {f"{a}/{b}": len(patients[a] & patients[b]) for a, b in _OVERLAP_PAIRS
             if a in splits and b in splits}
  images = None
  if not labels_only:
    listed = source.listed
    found = list(located(source, listed, src, problems).values())
    unreadable = sum(image is None for _, image in
                     decoded(lambda ex: load_image(ex.image), found, problems, num_workers))
    images = {"listed": len(listed), "found": len(found), "missing": len(listed) - len(found),
              "unreadable": unreadable, "readable": len(found) - unreadable}
  return {
      "source": src, "csv": os.path.basename(source.files[0]), "csv_rows": len(source.rows),
      "unlisted_images": source.unlisted, "unknown_age": source.unknown_age,
      "val_fraction": val_fraction, "seed": seed, "split_lists": split_lists,
      "splits": {s: {"num_images": len(names), "num_patients": len(patients[s])}
                 for s, names in splits.items()},
      "label_counts": {s: dict(zip(CLASSES, map(int, y.sum(0)))) for s, y in labels.items()},
      "no_finding": {s: int((y.sum(1) == 0).sum()) for s, y in labels.items()},
      "patient_overlap": overlap, "patient_disjoint": not any(overlap.values()),
      "images": images, "skipped": problems.summary()}


def format_report(stats: dict) -> str:
  """The `check` statistics as a plain-text table."""
  cols, lists = (*stats["splits"], "total"), stats["split_lists"]
  counts, nf, overlap = stats["label_counts"], stats["no_finding"], stats["patient_overlap"]
  return "\n".join([
      f"ChestX-ray14 at {stats['source']} ({stats['csv']}, {stats['csv_rows']:,} valid rows)",
      "splits as listed, val not carved: " + ", ".join(f"{s} {p}" for s, p in lists.items())
      if lists else
      f"val carved from train_val: {stats['val_fraction']} of patients, seed {stats['seed']}", "",
      f"{'split':<10}{'images':>10}{'patients':>10}{'no finding':>12}",
      *(f"{s:<10}{v['num_images']:>10,}{v['num_patients']:>10,}{nf[s]:>12,}"
        for s, v in stats["splits"].items()), "",
      "patients shared between splits: " + ", ".join(f"{k} {v}" for k, v in overlap.items())
      + f"  ({'' if stats['patient_disjoint'] else 'NOT '}patient-disjoint)",
      f"rows in {'no' if lists else 'neither'} split list: {stats['unlisted_images']:,}; "
      f"unknown or implausible age (> {MAX_AGE}): {stats['unknown_age']:,}", "",
      f"{'positives':<20}" + "".join(f"{c:>11}" for c in cols),
      *(f"{c:<20}" + "".join(f"{counts[s][c]:>11,}" for s in cols) for c in CLASSES),
      f"{'(No Finding)':<20}" + "".join(f"{nf[s]:>11,}" for s in cols), "",
      "images: " + ("not checked (--labels_only)" if stats["images"] is None else
                    ", ".join(f"{k} {v:,}" for k, v in stats["images"].items())),
      "skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(stats["skipped"]["counts"].items()))
                     or "none")])


class ChestXray14(Builder):
  """NIH ChestX-ray14: the official train_val / test lists, val carved by patient, or
  published train / [val /] test lists (split_lists) as given."""

  name = "chestxray14"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Official train_val / test lists; val carved from train_val by "
                            "patient; text from age, sex and view only."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  From NIH's box folder https://nihcc.app.box.com/v/ChestXray-NIHCC download into one folder,
  the one passed as --src: Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv; either may be
  gzipped), train_val_list.txt, test_list.txt, and images_001.tar.gz ... images_012.tar.gz
  (in the box folder's images/), extracted in place (`tar xzf images_001.tar.gz` in SRC):
    SRC/Data_Entry_2017_v2020.csv  SRC/train_val_list.txt  SRC/test_list.txt  SRC/images/*.png
  The Kaggle mirror's layout (SRC/images_001/images/*.png ... SRC/images_012/images/*.png) is
  read as it is."""
  HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
  CITATION = """\
@inproceedings{wang2017chestxray8,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={2097--2106}, year={2017}}"""
  DESCRIPTION = "NIH ChestX-ray14: 112,120 frontal chest x-rays of 30,805 patients, 14 findings."
  CLASSES = CLASSES
  TEXT_POLICY = ("One sentence made only from Patient Age, Patient Gender and View Position "
                 "(e.g. 'A 58-year-old male patient, PA view.'), never from Finding Labels; "
                 f"an age above {MAX_AGE} or unparseable, an unknown sex or view is left out.")
  EXTRA = {"view": tfds.features.Text(), "sex": tfds.features.Text(),
           "age": tfds.features.Scalar(dtype=np.int32)}

  def __init__(self, *, val_fraction: float = 0.1, seed: int = 0,
               split_lists: str | dict | None = None, **kwargs):
    self.val_fraction, self.seed = val_fraction, seed
    self.split_lists = parse_split_lists(split_lists)
    super().__init__(**kwargs)

  def source_files(self, src: str) -> list[str]:
    table, lists = find_files(src, self.split_lists)
    return [table, *lists.values()]

  def read(self, src: str) -> dict[str, list[Example]]:
    self._source = source = read_source(src, self.problems, self.split_lists)
    splits = source.splits(self.val_fraction, self.seed)
    splits = {s: splits[s] for s in SPLITS if s in splits}
    found = located(source, [n for names in splits.values() for n in names], src, self.problems)
    out = {s: [found[n] for n in names if n in found] for s, names in splits.items()}
    return {s: examples for s, examples in out.items() if examples}  # TFDS refuses empty ones

  def metadata(self) -> dict:
    counts = {"unlisted_rows": self._source.unlisted, "unknown_age": self._source.unknown_age}
    if self.split_lists:
      names = {s: os.path.basename(p) for s, p in self.split_lists.items()}
      given = ", ".join(f"{s} {n}" for s, n in names.items())
      return {"split_policy": f"published lists as given, val not carved: {given}; an image "
                              "or patient in two lists is bad input",
              "split_lists": names, **counts}
    return {"split_policy": f"official {TRAIN_VAL_LIST} / {TEST_LIST}; val = "
                            f"{self.val_fraction} of the train_val patients (seed {self.seed}), "
                            "whole patients (sources.patient_split)",
            "val_fraction": self.val_fraction, "seed": self.seed, **counts}
