"""What every dataset adapter shares: reading the source as released, and one policy each for
bad input, CSVs, the patient-wise split, the clinical sentence and image decoding.

- Bad input (a missing or unreadable image, a malformed CSV row, an unknown label or image, an
  empty report) stops preparation with an error naming the file and row, unless skip_bad is
  set: then it is counted by kind, logged and skipped, and the counts go into the built
  dataset's metadata (`skipped`).
- CSVs are read as UTF-8 with or without a BOM (a table re-saved by a spreadsheet starts with
  one, which would otherwise rename the first column), gzipped or not. Rows are numbered as an
  editor shows them: the header is row 1.
- The patient-wise split ranks patients by sha256(f"{seed}/{patient_id}"): deterministic for a
  seed, independent of NumPy's generators and of the order of the source files, and whole
  patients go to one side only.
- The clinical sentence is made from age, sex and view only, from a fixed vocabulary: whatever
  a CSV holds, no label word can reach the text stream.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import gzip
import hashlib
import logging
import math
import os
from typing import Callable, Iterable, Iterator

from medvlmoe_jax.cli import BadInputError  # defined below every layer; re-exported here

log = logging.getLogger(__name__)


class Problems:
  """Raises on the first problem, or (skip_bad) counts them by kind."""

  def __init__(self, skip_bad: bool = False):
    self.skip_bad = skip_bad
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def report(self, kind: str, where: str, message: str) -> None:
    text = f"{where}: {message}"
    if not self.skip_bad:
      raise BadInputError(text + " (use --skip_bad to skip such entries)")
    self.counts[kind] += 1
    if len(self.examples[kind]) < 5:
      self.examples[kind].append(text)
    log.warning("skipped (%s) %s", kind, text)

  def summary(self) -> dict:
    return {"counts": dict(self.counts), "examples": dict(self.examples)}


# ---------------------------------------------------------------------------- files


def open_text(path: str):
  """A text file, gzipped or not, as UTF-8 with an optional BOM."""
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
  return open(path, encoding="utf-8-sig", newline="")


def csv_rows(path: str, required: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
  """Yields ("file, row N", {column: value}) per non-blank data row. A row with a column count
  unlike the header's is yielded as {"_error": ...} so that the caller reports it in order; a
  trailing empty cell that the header lacks (the 2017 ChestX-ray14 table) is dropped."""
  with open_text(path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
      raise BadInputError(f"{path}, row 1: empty file (expected a header)")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
      raise BadInputError(f"{path}, row 1: header lacks column(s) {missing}; got {header}")
    for row in reader:
      where = f"{path}, row {reader.line_num}"
      if not row or (len(row) == 1 and not row[0].strip()):
        continue
      if len(row) == len(header) + 1 and row[-1] == "":
        row = row[:-1]
      if len(row) != len(header):
        yield where, {"_error": f"{len(row)} columns, the header has {len(header)}",
                      "_first": row[0].strip() if row else ""}
        continue
      yield where, dict(zip(header, row))


def md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def checksums(paths: Iterable[str]) -> dict[str, str]:
  """{file name: md5} of the source files a dataset was built from (its metadata)."""
  return {os.path.basename(p): md5(p) for p in paths}


# ---------------------------------------------------------------------------- splits


def patient_split(patients: Iterable[str], val_fraction: float, seed: int) -> set[str]:
  """The patients that go to `val`: round(val_fraction * patients) of them (at least one and
  not all, when val_fraction > 0 and there are two or more), the lowest by
  sha256(f"{seed}/{patient_id}")."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
  unique = sorted(set(patients))
  num_val = math.floor(val_fraction * len(unique) + 0.5)
  if val_fraction > 0 and len(unique) >= 2:
    num_val = min(max(num_val, 1), len(unique) - 1)
  ranked = sorted(unique, key=lambda p: hashlib.sha256(f"{seed}/{p}".encode()).digest())
  return set(ranked[:num_val])


# ---------------------------------------------------------------------------- text

_SEX = {"M": "male", "MALE": "male", "F": "female", "FEMALE": "female"}


def sentence(age: int | None, sex: str = "", view: str = "") -> str:
  """'A 58-year-old male patient, PA view.': what the clinician knows before reading the image.
  `view` is a phrase from the adapter's fixed vocabulary ('' to leave it out); an unknown sex
  or age is left out."""
  sex_word = _SEX.get(str(sex or "").strip().upper())
  who = f"{sex_word} patient" if sex_word else "patient"
  if age is None:
    text = f"A {who}"
  elif age == 0:
    text = f"A {who} under 1 year old"
  else:
    # "an" before the numbers spoken with a vowel sound: 8, 11, 18, 80-89.
    article = "An" if str(age).startswith("8") or age in (11, 18) else "A"
    text = f"{article} {age}-year-old {who}"
  return f"{text}, {view}." if view else f"{text}."


# ---------------------------------------------------------------------------- images


def ordered_map(fn: Callable, items: Iterable, num_workers: int | None = None) -> Iterator:
  """fn over items in threads (PIL decodes without the GIL), results in order, a bounded
  window in flight."""
  workers = num_workers or min(16, os.cpu_count() or 1)
  if workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending: collections.deque = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 8 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
