"""NIH ChestX-ray14 as a TFDS builder, read from the folder as NIH ships it.

The label table (v2020 preferred: it fixes the 2017 table's implausible ages) and the official
split lists are cross-checked before any image is touched: every listed image must be a valid
row, in one list only, and no patient may be in both lists, since a shared patient would leak
into the test score. A row dropped as bad (skip_bad) is also dropped from the lists rather
than reported a second time there. Val is carved from train_val by patient with
`sources.patient_split`, so train / val / test never share a patient.
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

_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
             "View Position")
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
  files: tuple[str, ...]          # CSV, train_val list, test list
  rows: dict[str, Example]
  train_val: list[str]
  test: list[str]
  unlisted: int = 0               # valid rows in neither list
  unknown_age: int = 0            # valid rows of unknown or implausible age

  def patients(self, names) -> set[str]:
    return {self.rows[n].patient_id for n in names}

  def splits(self, val_fraction: float, seed: int) -> dict[str, list[str]]:
    val = patient_split(self.patients(self.train_val), val_fraction, seed)
    return {"train_val": self.train_val, "test": self.test,
            "train": [n for n in self.train_val if self.rows[n].patient_id not in val],
            "val": [n for n in self.train_val if self.rows[n].patient_id in val]}


def find_files(src: str) -> tuple[str, str, str]:
  """(CSV, train_val list, test list); a missing one is fatal, not skippable."""
  if not os.path.isdir(src):
    raise FileNotFoundError(f"--src {src!r}: no such directory")
  found = [os.path.join(src, n) for n in CSV_NAMES if os.path.exists(os.path.join(src, n))]
  if not found:
    raise FileNotFoundError(f"{src}: none of {', '.join(CSV_NAMES)} (the NIH label table)")
  for name in (TRAIN_VAL_LIST, TEST_LIST):
    if not os.path.exists(os.path.join(src, name)):
      raise FileNotFoundError(f"{src}: no {name} (the official split list)")
  return found[0], os.path.join(src, TRAIN_VAL_LIST), os.path.join(src, TEST_LIST)


def read_source(src: str, problems: Problems) -> Source:
  """The table and the split lists, cross-checked; images are not touched."""
  files = find_files(src)
  rows, dropped = {}, set()   # valid rows by name; names of rows dropped as bad
  for where, row in csv_rows(files[0], _REQUIRED):
    name = row.get("_first") if "_error" in row else row["Image Index"].strip()
    patient, field = row.get("Patient ID", "").strip(), row.get("Finding Labels", "")
    labels = [n.strip() for n in field.split("|")]
    unknown = [n for n in labels if n not in CLASSES + (NO_FINDING,)]
    if "_error" in row or not name:   # bad: (kind, message), in the order they are checked
      bad = "malformed_row", row.get("_error", "empty Image Index")
    elif name in rows:
      bad = "duplicate_row", f"{name} already given in {rows[name].where.rsplit(', ', 1)[1]}"
    elif not patient:
      bad = "malformed_row", f"{name}: empty Patient ID"
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
                           label_mask=np.ones(len(CLASSES), bool),
                           patient_id=str(int(patient)) if patient.isdigit() else patient)
      continue
    problems.report(bad[0], where, bad[1])
    dropped.add(name)
  dropped -= rows.keys() | {""}   # a valid row of the name (a duplicate's first) stays listed
  tv_lines, test_lines = {}, {}   # name -> line of the list, in list order
  for path, seen in zip(files[1:], (tv_lines, test_lines)):
    with open(path, encoding="utf-8-sig") as f:
      for line_no, name in enumerate(map(str.strip, f), 1):
        if not name or name in dropped:
          continue
        if name not in rows:
          problems.report("unknown_image_in_split", f"{path}, line {line_no}",
                          f"{name} is not a row of the label table")
        elif name in seen:
          problems.report("duplicate_in_split", f"{path}, line {line_no}",
                          f"{name} already listed on line {seen[name]}")
        else:
          seen[name] = line_no
  for name in filter(test_lines.__contains__, tv_lines):
    problems.report("image_in_both_splits", f"{files[1]}, line {tv_lines[name]}",
                    f"{name} is also on line {test_lines[name]} of {TEST_LIST}; with "
                    "--skip_bad the test list keeps it")
  train_val = [n for n in tv_lines if n not in test_lines]
  test_patients = {rows[n].patient_id for n in test_lines}
  shared: dict[str, list[str]] = {}   # patient -> their train_val images, in list order
  for name in (n for n in train_val if rows[n].patient_id in test_patients):
    shared.setdefault(rows[name].patient_id, []).append(name)
  for pid, names in shared.items():
    problems.report("patient_in_both_splits", f"{files[1]}, line {tv_lines[names[0]]}",
                    f"patient {pid} ({names[0]}) also has images in {TEST_LIST}; with "
                    f"--skip_bad the {len(names)} train_val image(s) of the patient are dropped")
  train_val = [n for n in train_val if rows[n].patient_id not in shared]
  return Source(files, rows, train_val, list(test_lines),
                unlisted=len(rows.keys() - {*train_val, *test_lines}),
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
          val_fraction: float = 0.1, seed: int = 0, num_workers: int | None = None) -> dict:
  """Validates the source and returns split / patient / label statistics; writes nothing."""
  problems = problems or Problems()
  source = read_source(src, problems)
  splits = source.splits(val_fraction, seed)
  labels = {s: np.reshape([source.rows[n].labels for n in names], (-1, len(CLASSES)))
            for s, names in {**splits, "total": source.train_val + source.test}.items()}
  patients = {s: source.patients(names) for s, names in splits.items()}
  overlap = {f"{a}/{b}": len(patients[a] & patients[b]) for a, b in _OVERLAP_PAIRS}
  images = None
  if not labels_only:
    listed = source.train_val + source.test
    found = list(located(source, listed, src, problems).values())
    unreadable = sum(image is None for _, image in
                     decoded(lambda ex: load_image(ex.image), found, problems, num_workers))
    images = {"listed": len(listed), "found": len(found), "missing": len(listed) - len(found),
              "unreadable": unreadable, "readable": len(found) - unreadable}
  return {
      "source": src, "csv": os.path.basename(source.files[0]), "csv_rows": len(source.rows),
      "unlisted_images": source.unlisted, "unknown_age": source.unknown_age,
      "val_fraction": val_fraction, "seed": seed,
      "splits": {s: {"num_images": len(names), "num_patients": len(patients[s])}
                 for s, names in splits.items()},
      "label_counts": {s: dict(zip(CLASSES, map(int, y.sum(0)))) for s, y in labels.items()},
      "no_finding": {s: int((y.sum(1) == 0).sum()) for s, y in labels.items()},
      "patient_overlap": overlap, "patient_disjoint": not any(overlap.values()),
      "images": images, "skipped": problems.summary()}


def format_report(stats: dict) -> str:
  """The `check` statistics as a plain-text table."""
  cols = ("train_val", "test", "train", "val", "total")
  counts, nf, overlap = stats["label_counts"], stats["no_finding"], stats["patient_overlap"]
  return "\n".join([
      f"ChestX-ray14 at {stats['source']} ({stats['csv']}, {stats['csv_rows']:,} valid rows)",
      f"val carved from train_val: {stats['val_fraction']} of patients, seed {stats['seed']}", "",
      f"{'split':<10}{'images':>10}{'patients':>10}{'no finding':>12}",
      *(f"{s:<10}{v['num_images']:>10,}{v['num_patients']:>10,}{nf[s]:>12,}"
        for s, v in stats["splits"].items()), "",
      "patients shared between splits: " + ", ".join(f"{k} {v}" for k, v in overlap.items())
      + f"  ({'' if stats['patient_disjoint'] else 'NOT '}patient-disjoint)",
      f"rows in neither split list: {stats['unlisted_images']:,}; "
      f"unknown or implausible age (> {MAX_AGE}): {stats['unknown_age']:,}", "",
      f"{'positives':<20}" + "".join(f"{c:>11}" for c in cols),
      *(f"{c:<20}" + "".join(f"{counts[s][c]:>11,}" for s in cols) for c in CLASSES),
      f"{'(No Finding)':<20}" + "".join(f"{nf[s]:>11,}" for s in cols), "",
      "images: " + ("not checked (--labels_only)" if stats["images"] is None else
                    ", ".join(f"{k} {v:,}" for k, v in stats["images"].items())),
      "skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(stats["skipped"]["counts"].items()))
                     or "none")])


class ChestXray14(Builder):
  """NIH ChestX-ray14: the official train_val / test lists, val carved by patient."""

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

  def __init__(self, *, val_fraction: float = 0.1, seed: int = 0, **kwargs):
    self.val_fraction, self.seed = val_fraction, seed
    super().__init__(**kwargs)

  def source_files(self, src: str) -> list[str]:
    return list(find_files(src))

  def read(self, src: str) -> dict[str, list[Example]]:
    self._source = source = read_source(src, self.problems)
    splits = source.splits(self.val_fraction, self.seed)
    found = located(source, splits["train"] + splits["val"] + splits["test"], src, self.problems)
    out = {s: [found[n] for n in splits[s] if n in found] for s in ("train", "val", "test")}
    return {s: examples for s, examples in out.items() if examples}  # TFDS refuses empty ones

  def metadata(self) -> dict:
    return {"split_policy": f"official {TRAIN_VAL_LIST} / {TEST_LIST}; val = "
                            f"{self.val_fraction} of the train_val patients (seed {self.seed}), "
                            "whole patients (sources.patient_split)",
            "val_fraction": self.val_fraction, "seed": self.seed,
            "unlisted_rows": self._source.unlisted, "unknown_age": self._source.unknown_age}
