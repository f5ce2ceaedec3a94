"""NIH ChestX-ray14: the published layout -> the project's records (see `records`).

The source folder is read as NIH ships it:

  Data_Entry_2017_v2020.csv or Data_Entry_2017.csv (either may be gzipped; v2020 wins:
      it fixes the implausible ages of the 2017 table)
  train_val_list.txt, test_list.txt      the official patient-wise split, one name a line
  images/*.png                           the tarballs extracted in place, or
  images_001/images/ ... images_012/images/   the per-tarball folders (Kaggle mirror)

Row numbers in error messages are lines of the file as an editor shows them: the CSV
header is row 1. Bad input goes through `prep.Problems`: it stops, or with skip_bad it is
counted and skipped, and an image dropped that way is also dropped from the split lists
(it is not reported a second time as unknown there).

The validation split is carved from train_val by patient: patients are ordered by a hash
of (seed, patient id), so the choice does not depend on NumPy's generators or on the
order of the files, and train / val / test never share a patient.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import glob
import gzip
import hashlib
import io
import math
import os
import re

import numpy as np

from medvlmoe_jax.data import records
from medvlmoe_jax.data.prep import BadInputError, Problems
from medvlmoe_jax.data.preprocess import load_image, resize_and_crop

NAME = "chestxray14"
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
           "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
           "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz",
             "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
SPLITS = ("train", "val", "test")
MAX_AGE = 120

TEXT_POLICY = ("One sentence made only from Patient Age, Patient Gender and View Position "
               "(e.g. 'A 58-year-old male patient, PA view.'), never from Finding Labels; "
               f"ages above {MAX_AGE} or unparseable are written as unknown age.")

_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
             "View Position")
_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
# Ages as written in the releases: "58", and in the oldest table "058Y" / "003M" / "010D".
_AGE_RE = re.compile(r"^\s*(\d{1,4})\s*([YyMmWwDd]?)\s*$")
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
# Fixed vocabulary: whatever the CSV holds, the sentence cannot carry free text.
_SEX = {"M": "male", "MALE": "male", "F": "female", "FEMALE": "female"}
_VIEW = {"PA": "PA view", "AP": "AP view", "LL": "lateral view", "RL": "lateral view",
         "LATERAL": "lateral view"}


# ---------------------------------------------------------------- text policy


def parse_age(raw) -> int | None:
  """Years as an int, or None where the table's value is missing or implausible.

  The 2017 table has ages like 411 (typos); refusing the whole dataset over them would
  help nobody, and guessing a correction would invent data, so they become unknown.
  """
  if raw is None:
    return None
  if isinstance(raw, (int, np.integer)):
    value, unit = int(raw), ""
  else:
    match = _AGE_RE.match(str(raw))
    if not match:
      return None
    value, unit = int(match.group(1)), match.group(2).upper()
  years = int(value * _AGE_UNIT_YEARS[unit])
  return years if 0 <= years <= MAX_AGE else None


def sentence(age, sex, view) -> str:
  """The text stream for one image: what the clinician knows before reading it."""
  years = parse_age(age)
  sex_word = _SEX.get(str(sex or "").strip().upper())
  view_words = _VIEW.get(str(view or "").strip().upper())
  who = f"{sex_word} patient" if sex_word else "patient"
  if years is None:
    text = f"A {who} of unknown age"
  elif years == 0:
    text = f"A {who} under 1 year old"
  else:
    # "an" before the numbers spoken with a vowel sound: 8, 11, 18, 80-89.
    article = "An" if str(years).startswith("8") or years in (11, 18) else "A"
    text = f"{article} {years}-year-old {who}"
  return f"{text}, {view_words}." if view_words else f"{text}."


# ---------------------------------------------------------------- reading the source


@dataclasses.dataclass
class Entry:
  """One CSV row that passed validation."""
  name: str
  labels: np.ndarray   # (14,) float32
  patient_id: str
  age: int | None
  sex: str
  view: str
  row: int             # line in the CSV, header = 1


@dataclasses.dataclass
class Source:
  """The parsed source: rows by image name and the official split lists (validated)."""
  csv_path: str
  train_val_path: str
  test_path: str
  entries: dict[str, Entry]
  train_val: list[str]
  test: list[str]
  unlisted: int         # CSV rows in neither split list
  unknown_age: int      # rows whose age is missing or implausible

  def patients(self, names) -> set[str]:
    return {self.entries[n].patient_id for n in names}


def find_files(src: str) -> tuple[str, str, str]:
  """(CSV, train_val list, test list) paths; a missing one is fatal, not skippable."""
  if not os.path.isdir(src):
    raise FileNotFoundError(f"--src {src!r}: no such directory")
  csv_path = next((os.path.join(src, n) for n in CSV_NAMES
                   if os.path.exists(os.path.join(src, n))), None)
  if csv_path is None:
    raise FileNotFoundError(f"{src}: none of {', '.join(CSV_NAMES)} (the NIH label table)")
  lists = []
  for name in (TRAIN_VAL_LIST, TEST_LIST):
    path = os.path.join(src, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{src}: no {name} (the official split list)")
    lists.append(path)
  return csv_path, lists[0], lists[1]


def _open_text(path: str):
  # utf-8-sig: a table re-saved by a spreadsheet starts with a BOM, which would rename
  # the first column.
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
  return open(path, encoding="utf-8-sig", newline="")


def _parse_labels(field: str) -> tuple[np.ndarray | None, str | None]:
  names = [n.strip() for n in field.split("|")]
  if names == [NO_FINDING]:
    return np.zeros(len(CLASSES), np.float32), None
  if not field.strip():
    return None, "empty Finding Labels"
  if NO_FINDING in names:
    return None, f"{NO_FINDING!r} together with other labels in {field!r}"
  unknown = [n for n in names if n not in _CLASS_INDEX]
  if unknown:
    return None, (f"unknown label {unknown[0]!r} in Finding Labels {field!r} "
                  f"(known: {', '.join(CLASSES)}, {NO_FINDING})")
  labels = np.zeros(len(CLASSES), np.float32)
  labels[[_CLASS_INDEX[n] for n in names]] = 1.0
  return labels, None


def read_table(path: str, problems: Problems) -> tuple[dict[str, Entry], set[str]]:
  """Validated rows by image name, and the names of rows dropped as bad (skip_bad)."""
  entries: dict[str, Entry] = {}
  dropped: set[str] = set()
  with _open_text(path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
      raise BadInputError(f"{path}, row 1: empty file (expected a header with "
                          f"{', '.join(_REQUIRED)}, ...)")
    header = [h.strip() for h in header]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
      raise BadInputError(f"{path}, row 1: header lacks column(s) {missing} (got {header})")
    col = {c: header.index(c) for c in _REQUIRED}
    ncols = len(header)
    for row in reader:
      line = reader.line_num
      if not row or (len(row) == 1 and not row[0].strip()):
        continue  # blank line
      # The 2017 table ends each row with a comma that its header may lack.
      if len(row) == ncols + 1 and row[-1] == "":
        row = row[:-1]
      where = f"{path}, row {line}"
      if len(row) != ncols:
        problems.report("malformed_row", where,
                        f"{len(row)} columns, expected {ncols} as in the header")
        if row and row[0].strip():
          dropped.add(row[0].strip())
        continue
      name = row[col["Image Index"]].strip()
      if not name:
        problems.report("malformed_row", where, "empty Image Index")
        continue
      if name in entries:
        problems.report("duplicate_row", where, f"{name} already given in row {entries[name].row}")
        continue
      patient = row[col["Patient ID"]].strip()
      if not patient:
        problems.report("malformed_row", where, f"{name}: empty Patient ID")
        dropped.add(name)
        continue
      labels, error = _parse_labels(row[col["Finding Labels"]])
      if error:
        problems.report("unknown_label", where, f"{name}: {error}")
        dropped.add(name)
        continue
      entries[name] = Entry(
          name=name, labels=labels,
          patient_id=str(int(patient)) if patient.isdigit() else patient,
          age=parse_age(row[col["Patient Age"]]), sex=row[col["Patient Gender"]].strip(),
          view=row[col["View Position"]].strip(), row=line)
  return entries, dropped


def read_list(path: str, entries: dict[str, Entry], dropped: set[str],
              problems: Problems) -> dict[str, int]:
  """Name -> line of one split list, in file order; each must be a (valid) row of the CSV."""
  seen: dict[str, int] = {}
  with open(path, encoding="utf-8-sig") as f:
    for line_no, line in enumerate(f, 1):
      name = line.strip()
      if not name or name in dropped:
        continue
      where = f"{path}, line {line_no}"
      if name not in entries:
        problems.report("unknown_image_in_split", where, f"{name} is not a row of the label table")
        continue
      if name in seen:
        problems.report("duplicate_in_split", where, f"{name} already listed on line {seen[name]}")
        continue
      seen[name] = line_no
  return seen


def read_source(src: str, problems: Problems) -> Source:
  """Parses and cross-checks the table and the split lists; images are not touched."""
  csv_path, tv_path, test_path = find_files(src)
  entries, dropped = read_table(csv_path, problems)
  tv_lines = read_list(tv_path, entries, dropped, problems)
  test_lines = read_list(test_path, entries, dropped, problems)
  test = list(test_lines)
  for name in tv_lines:
    if name in test_lines:
      problems.report("image_in_both_splits", f"{tv_path}, line {tv_lines[name]}",
                      f"{name} is also on line {test_lines[name]} of {TEST_LIST}; with "
                      "--skip-bad the test list keeps it")
  train_val = [n for n in tv_lines if n not in test_lines]
  # The official split is patient-wise; a shared patient would leak into the test score.
  test_patients = {entries[n].patient_id for n in test}
  shared = sorted({entries[n].patient_id for n in train_val} & test_patients, key=_pid_key)
  for pid in shared:
    names = [n for n in train_val if entries[n].patient_id == pid]
    problems.report("patient_in_both_splits", f"{tv_path}, line {tv_lines[names[0]]}",
                    f"patient {pid} ({names[0]}) also has images in {TEST_LIST}; with "
                    f"--skip-bad the {len(names)} train_val image(s) of the patient are dropped")
  if shared:
    shared_set = set(shared)
    train_val = [n for n in train_val if entries[n].patient_id not in shared_set]
  listed = set(train_val) | set(test)
  return Source(csv_path=csv_path, train_val_path=tv_path, test_path=test_path,
                entries=entries, train_val=train_val, test=test,
                unlisted=sum(1 for n in entries if n not in listed),
                unknown_age=sum(1 for e in entries.values() if e.age is None))


def _pid_key(pid: str):
  return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def carve_val(train_val: list[str], entries: dict[str, Entry], val_fraction: float = 0.1,
              seed: int = 0) -> tuple[list[str], list[str]]:
  """(train, val) names, val holding round(val_fraction * patients) whole patients."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
  patients = sorted({entries[n].patient_id for n in train_val}, key=_pid_key)
  num_val = math.floor(val_fraction * len(patients) + 0.5)
  if val_fraction > 0 and len(patients) >= 2:
    num_val = min(max(num_val, 1), len(patients) - 1)
  ranked = sorted(patients, key=lambda p: hashlib.sha256(f"{seed}/{p}".encode()).digest())
  val_patients = set(ranked[:num_val])
  train = [n for n in train_val if entries[n].patient_id not in val_patients]
  val = [n for n in train_val if entries[n].patient_id in val_patients]
  return train, val


# ---------------------------------------------------------------- images


def index_images(src: str) -> dict[str, str]:
  """Image name -> path over images/, images_NNN/images/ and images_NNN/ (first wins)."""
  dirs = [os.path.join(src, "images")]
  for d in sorted(glob.glob(os.path.join(src, "images_*"))):
    if os.path.isdir(d):
      dirs += [os.path.join(d, "images"), d]
  index: dict[str, str] = {}
  for d in dirs:
    if not os.path.isdir(d):
      continue
    with os.scandir(d) as it:
      for e in it:
        if e.name not in index and e.is_file():
          index[e.name] = e.path
  return index


def _ordered_map(fn, items, num_workers: int):
  """fn over items in threads (PIL decodes without the GIL), results in order, bounded."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  window = 8 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _default_workers() -> int:
  return min(16, os.cpu_count() or 1)


def _try_load(path: str):
  """(image, None) or (None, error text): the error is reported in the caller's thread."""
  try:
    return load_image(path), None
  except (FileNotFoundError, ValueError) as e:
    return None, str(e)


def _image_problem(source: Source, name: str, problems: Problems,
                   error: str | None = None) -> None:
  entry = source.entries[name]
  where = f"{source.csv_path}, row {entry.row}"
  if error is None:
    problems.report("missing_image", where,
                    f"image {name} not found under images/ or images_*/images/")
  else:
    problems.report("unreadable_image", where, f"image {error}")


def check_images(source: Source, names: list[str], src: str, problems: Problems,
                 num_workers: int | None = None) -> dict:
  """Every listed image exists and decodes; returns counts (bad ones need skip_bad)."""
  index = index_images(src)
  present = [n for n in names if n in index]
  missing = 0
  for n in names:
    if n not in index:
      _image_problem(source, n, problems)
      missing += 1
  unreadable = 0
  results = _ordered_map(lambda n: (n, _try_load(index[n])[1]), present,
                         num_workers or _default_workers())
  for name, error in results:
    if error:
      _image_problem(source, name, problems, error)
      unreadable += 1
  return {"listed": len(names), "found": len(present), "missing": missing,
          "unreadable": unreadable, "readable": len(present) - unreadable}


# ---------------------------------------------------------------- check / prepare


def _split_stats(source: Source, splits: dict[str, list[str]]) -> dict:
  stats: dict = {"splits": {}, "label_counts": {}, "no_finding": {}}
  for split, names in splits.items():
    labels = (np.stack([source.entries[n].labels for n in names]) if names
              else np.zeros((0, len(CLASSES)), np.float32))
    stats["splits"][split] = {"num_images": len(names),
                              "num_patients": len(source.patients(names))}
    stats["label_counts"][split] = dict(zip(CLASSES, labels.sum(0).astype(int).tolist()))
    stats["no_finding"][split] = int((labels.sum(1) == 0).sum())
  official = ("train_val", "test")
  stats["label_counts"]["total"] = {
      c: sum(stats["label_counts"][s][c] for s in official) for c in CLASSES}
  stats["no_finding"]["total"] = sum(stats["no_finding"][s] for s in official)
  overlap = {}
  for a, b in (("train_val", "test"), ("train", "val"), ("train", "test"), ("val", "test")):
    overlap[f"{a}/{b}"] = len(source.patients(splits[a]) & source.patients(splits[b]))
  stats["patient_overlap"] = overlap
  stats["patient_disjoint"] = all(v == 0 for v in overlap.values())
  return stats


def check(src: str, labels_only: bool = False, problems: Problems | None = None,
          val_fraction: float = 0.1, seed: int = 0, num_workers: int | None = None) -> dict:
  """Validates the source and returns split / patient / label statistics; writes nothing."""
  problems = problems or Problems()
  source = read_source(src, problems)
  train, val = carve_val(source.train_val, source.entries, val_fraction, seed)
  splits = {"train_val": source.train_val, "test": source.test, "train": train, "val": val}
  stats = {"source": src, "csv": os.path.basename(source.csv_path),
           "csv_rows": len(source.entries), "unlisted_images": source.unlisted,
           "unknown_age": source.unknown_age, "val_fraction": val_fraction, "seed": seed}
  stats.update(_split_stats(source, splits))
  stats["images"] = None if labels_only else check_images(
      source, source.train_val + source.test, src, problems, num_workers)
  stats["skipped"] = problems.summary()
  return stats


def _encode(entry: Entry, path: str | None, image_size: int):
  """(record, None) or (None, error): runs in a worker thread."""
  if path is None:
    return None, None
  image, error = _try_load(path)
  if error:
    return None, error
  record = records.encode_example(
      resize_and_crop(image, image_size), sentence(entry.age, entry.sex, entry.view),
      entry.labels, np.ones(len(CLASSES), bool), entry.patient_id, entry.name)
  return record, None


def _write(out: str, split: str, source: Source, names: list[str], index: dict[str, str],
           image_size: int, problems: Problems, num_workers: int) -> tuple[list[str], list[str]]:
  """Writes one split; returns (shard files, names written).

  The shard count is fixed before the images are decoded, so an image that turns out
  unreadable (skip_bad) makes the first pass come up short: the split is then written
  again without it. That costs a second decode only when the source has bad images.
  """
  bad: set[str] = set()
  for name in names:
    if name not in index:
      _image_problem(source, name, problems)
      bad.add(name)
  for attempt in range(2):
    todo = [n for n in names if n not in bad]

    def generate(todo=todo):
      results = _ordered_map(
          lambda n: (n, *_encode(source.entries[n], index.get(n), image_size)), todo,
          num_workers)
      for name, record, error in results:
        if error:
          if name not in bad:
            _image_problem(source, name, problems, error)
            bad.add(name)
          continue
        yield record

    n_bad = len(bad)
    try:
      files = records.write_split(out, split, generate(), len(todo))
    except RuntimeError:
      if attempt == 0 and len(bad) > n_bad:
        continue
      raise
    _remove_stale_shards(out, split, files)
    return files, todo
  raise AssertionError("unreachable")


def _remove_stale_shards(out: str, split: str, keep: list[str]) -> None:
  """Shards of an earlier run with another shard count would otherwise linger."""
  for path in glob.glob(os.path.join(out, f"{split}-*-of-*.array_record")):
    if os.path.basename(path) not in keep:
      os.remove(path)


def prepare(src: str, out: str, image_size: int = 224, problems: Problems | None = None,
            val_fraction: float = 0.1, seed: int = 0, num_workers: int | None = None) -> dict:
  """Writes train / val / test records and manifest.json into `out`; returns the manifest."""
  problems = problems or Problems()
  source = read_source(src, problems)
  train, val = carve_val(source.train_val, source.entries, val_fraction, seed)
  index = index_images(src)
  os.makedirs(out, exist_ok=True)
  splits = {}
  for split, names in (("train", train), ("val", val), ("test", source.test)):
    files, written = _write(out, split, source, names, index, image_size, problems,
                            num_workers or _default_workers())
    splits[split] = {"num_examples": len(written), "files": files,
                     "num_patients": len(source.patients(written))}
  manifest = {
      "name": NAME, "task": "multilabel", "classes": list(CLASSES), "image_size": image_size,
      "text_policy": TEXT_POLICY,
      "split_policy": (f"official train_val_list / test_list; val = {val_fraction} of the "
                       f"train_val patients (seed {seed}), whole patients"),
      "val_fraction": val_fraction, "seed": seed, "splits": splits,
      "skipped": problems.summary(),
      "source_checksums": {os.path.basename(p): records.file_checksum(p) for p in
                           (source.csv_path, source.train_val_path, source.test_path)},
  }
  records.write_manifest(out, manifest)
  return manifest


# ---------------------------------------------------------------- report


def format_report(stats: dict) -> str:
  """The `check` statistics as a plain-text table."""
  buf = io.StringIO()
  p = lambda *a: print(*a, file=buf)  # noqa: E731
  p(f"ChestX-ray14 at {stats['source']} ({stats['csv']}, {stats['csv_rows']:,} valid rows)")
  p(f"val carved from train_val: {stats['val_fraction']} of patients, seed {stats['seed']}")
  p()
  order = ("train_val", "test", "train", "val")
  p(f"{'split':<10}{'images':>10}{'patients':>10}{'no finding':>12}")
  for s in order:
    sp = stats["splits"][s]
    p(f"{s:<10}{sp['num_images']:>10,}{sp['num_patients']:>10,}{stats['no_finding'][s]:>12,}")
  p()
  p("patients shared between splits: " + ", ".join(
      f"{k} {v}" for k, v in stats["patient_overlap"].items())
    + ("  (patient-disjoint)" if stats["patient_disjoint"] else "  (NOT patient-disjoint)"))
  p(f"rows in neither split list: {stats['unlisted_images']:,}; "
    f"unknown or implausible age (> {MAX_AGE}): {stats['unknown_age']:,}")
  p()
  cols = order + ("total",)
  p(f"{'positives':<20}" + "".join(f"{c:>11}" for c in cols))
  for c in CLASSES:
    p(f"{c:<20}" + "".join(f"{stats['label_counts'][s][c]:>11,}" for s in cols))
  p(f"{'(No Finding)':<20}" + "".join(f"{stats['no_finding'][s]:>11,}" for s in cols))
  p()
  images = stats.get("images")
  if images is None:
    p("images: not checked (--labels-only)")
  else:
    p("images: " + ", ".join(f"{k} {v:,}" for k, v in images.items()))
  counts = stats["skipped"]["counts"]
  p("skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else "none"))
  return buf.getvalue().rstrip("\n")
