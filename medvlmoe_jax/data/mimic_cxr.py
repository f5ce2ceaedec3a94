"""MIMIC-CXR-JPG 2.0.0 (PhysioNet layout) plus MIMIC-CXR reports -> the project's records.

SRC/mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, the 14 CheXpert labels
SRC/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split
SRC/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ..., ViewPosition, ...
SRC/files/p10/p10000032/s50414267/<dicom_id>.jpg
REPORTS/files/p10/p10000032/s50414267.txt   (REPORTS: --reports, else SRC/mimic-cxr-reports
                                             if it exists, else SRC)

Decisions:
- Labels come per study (every image of a study shares them), are mapped by column name
  onto `chexpert.CLASSES` (same order as CheXpert, so heads transfer) and follow the same
  blank / uncertainty policies.
- Splits are the official ones: train -> train, validate -> val, test -> test.
- Frontal views only by default (ViewPosition PA or AP), as for CheXpert.
- Text: only what a clinician has before reading the image, the INDICATION / HISTORY /
  COMPARISON sections of the report, never FINDINGS or IMPRESSION, from which the labels
  were extracted. A report with none of them gets a sentence naming the view.
- A study without a row in the labels CSV, an image missing from the metadata, a missing
  or empty report and a missing or unreadable image are bad input: an error naming the
  file (and row), or counted and skipped with skip_bad.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np

from medvlmoe_jax.data import chexpert, records
from medvlmoe_jax.data.chexpert import CLASSES, Problems

NAME = "mimic_cxr"
LABELS_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLITS = {"train": "train", "validate": "val", "test": "test"}
FRONTAL = ("PA", "AP")
TEXT_POLICY = ("report sections INDICATION / HISTORY / COMPARISON only (never FINDINGS or "
               "IMPRESSION); a view sentence when the report has none of them")

# ---------------------------------------------------------------------------- report text

# Sections a clinician writes or has before the image is read; aliases -> one name.
_INCLUDED = {
    "indication": "Indication", "indications": "Indication",
    "clinical indication": "Indication", "reason for exam": "Indication",
    "reason for examination": "Indication", "history": "History",
    "clinical history": "History", "comparison": "Comparison", "comparisons": "Comparison"}
# Sections that read the image: they end whatever section precedes them wherever they
# appear and in any case, so a heading run into a line cannot let their text through.
_EXCLUDED = ("findings", "finding", "impressions", "impression", "conclusions", "conclusion",
             "wet read", "recommendations", "recommendation(s)", "recommendation",
             "notification", "opinion", "interpretation")
# Other headings seen in these reports; they end the previous section and are dropped.
_NEUTRAL = ("examination", "exam", "technique", "procedure", "type of examination",
            "reference exam")

_KNOWN = re.compile(
    r"\b(" + "|".join(re.escape(h).replace(r"\ ", r"\s+")
                      for h in sorted([*_INCLUDED, *_EXCLUDED, *_NEUTRAL], key=len,
                                      reverse=True)) + r")\s*:", re.IGNORECASE)
# Any capitalised heading opening a line ("WET READ:", "PORTABLE CHEST:").
_LINE_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ()/&'-]{0,40}?)[ \t]*:", re.MULTILINE)
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n")


def _norm(name: str) -> str:
  return " ".join(name.split()).lower()


def _headings(report: str) -> list[tuple[int, int, str | None]]:
  """(start, end, included section name or None) of every heading, in order."""
  found = []
  for m in _KNOWN.finditer(report):
    name = _norm(m.group(1))
    at_line_start = not report[report.rfind("\n", 0, m.start()) + 1:m.start()].strip()
    if name in _INCLUDED:
      if at_line_start or m.group(1).isupper():   # "... in comparison: ..." is prose
        found.append((m.start(), m.end(), _INCLUDED[name]))
    elif name in _EXCLUDED or at_line_start or m.group(1).isupper():
      found.append((m.start(), m.end(), None))
  for m in _LINE_HEADING.finditer(report):
    found.append((m.start(1), m.end(), _INCLUDED.get(_norm(m.group(1)))))
  found.sort(key=lambda h: (h[0], -h[1]))
  kept, end = [], -1
  for h in found:
    if h[0] >= end:
      kept.append(h)
      end = h[1]
  return kept


def clinical_sections(report: str) -> list[tuple[str, str]]:
  """[(section, text)] for the INDICATION / HISTORY / COMPARISON sections of a report.

  A section runs to the next heading of any kind and at most to the end of its first
  paragraph: findings written without a heading after COMPARISON are not picked up.
  """
  report = report.replace("\r\n", "\n").replace("\r", "\n")
  heads = _headings(report)
  sections = []
  for i, (_, end, name) in enumerate(heads):
    if name is None:
      continue
    stop = heads[i + 1][0] if i + 1 < len(heads) else len(report)
    body = report[end:stop]
    body = body[len(body) - len(body.lstrip()):]
    body = _PARAGRAPH_END.split(body, maxsplit=1)[0]
    body = " ".join(body.split())
    if body:
      sections.append((name, body))
  return sections


def view_sentence(view_position: str = "") -> str:
  """'A chest radiograph, PA view.'; codes are kept only when they look like codes."""
  code = " ".join(view_position.split()).upper()
  if not re.fullmatch(r"[A-Z]{1,12}( [A-Z]{1,12}){0,2}", code):
    return "A chest radiograph."
  words = [w if len(w) <= 3 else w.lower() for w in code.split()]
  return f"A chest radiograph, {' '.join(words)} view."


def clinical_text(report: str, view_position: str = "") -> str:
  """The text stream's input: 'Indication: ... History: ... Comparison: ...', or the view
  sentence when the report has none of those sections (the one place the text is composed;
  `prepare` calls it for every image)."""
  sections = clinical_sections(report)
  return " ".join(f"{name}: {body}" for name, body in sections) or view_sentence(view_position)


# ---------------------------------------------------------------------------- source tables

class Image(NamedTuple):
  where: str            # "split csv, row N"
  dicom_id: str
  subject_id: str
  study_id: str
  split: str            # train | validate | test (official names)
  view_position: str
  raw: np.ndarray       # (C,) float32 in {1, 0, -1, nan}, the study's labels

  @property
  def frontal(self) -> bool:
    return self.view_position.strip().upper() in FRONTAL

  @property
  def group(self) -> str:
    return ("p" + self.subject_id)[:3]

  def image_path(self, src: str) -> str:
    return os.path.join(src, "files", self.group, "p" + self.subject_id, "s" + self.study_id,
                        self.dicom_id + ".jpg")

  def report_path(self, reports_root: str) -> str:
    return os.path.join(reports_root, "files", self.group, "p" + self.subject_id,
                        "s" + self.study_id + ".txt")


def find_csv(src: str, name: str) -> str:
  for path in (os.path.join(src, name + ".gz"), os.path.join(src, name)):
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"--src {src!r}: neither {name}.gz nor {name} found")


def reports_root(src: str, reports: str | None = None) -> str:
  """Where `files/pXX/...txt` lives: --reports, else SRC/mimic-cxr-reports, else SRC."""
  if reports:
    if os.path.basename(os.path.normpath(reports)) == "files" and \
        not os.path.isdir(os.path.join(reports, "files")):
      return os.path.dirname(os.path.normpath(reports))
    return reports
  nested = os.path.join(src, "mimic-cxr-reports")
  return nested if os.path.isdir(nested) else src


def _ids_ok(values: dict[str, str], where: str, problems: Problems) -> bool:
  for key in ("subject_id", "study_id"):
    if key in values and not values[key].strip().isdigit():
      problems.report("bad_row", where, f"{key} is {values[key]!r} (expected digits)")
      return False
  if "dicom_id" in values and not re.fullmatch(r"[\w.-]+", values["dicom_id"].strip()):
    problems.report("bad_row", where, f"dicom_id is {values['dicom_id']!r}")
    return False
  return True


def read_labels(path: str, problems: Problems) -> dict[str, tuple[str, np.ndarray]]:
  """study_id -> (subject_id, raw labels)."""
  studies = {}
  for where, values in chexpert.csv_rows(path, ("subject_id", "study_id") + CLASSES):
    if "_error" in values:
      problems.report("bad_row", where, values["_error"])
      continue
    if not _ids_ok(values, where, problems):
      continue
    study = values["study_id"].strip()
    if study in studies:
      problems.report("bad_row", where, f"study {study} appears twice")
      continue
    raw = chexpert.parse_labels(values, where, problems)
    if raw is not None:
      studies[study] = (values["subject_id"].strip(), raw)
  return studies


def read_metadata(path: str, problems: Problems) -> dict[str, tuple[str, str, str]]:
  """dicom_id -> (subject_id, study_id, ViewPosition)."""
  images = {}
  for where, values in chexpert.csv_rows(path, ("dicom_id", "subject_id", "study_id",
                                                "ViewPosition")):
    if "_error" in values:
      problems.report("bad_row", where, values["_error"])
      continue
    if _ids_ok(values, where, problems):
      images[values["dicom_id"].strip()] = (values["subject_id"].strip(),
                                            values["study_id"].strip(),
                                            values["ViewPosition"].strip())
  return images


def read_images(src: str, problems: Problems) -> tuple[list[Image], dict[str, str]]:
  """The split CSV joined with the metadata and the labels; also the CSV paths used."""
  paths = {name: find_csv(src, name) for name in (LABELS_CSV, SPLIT_CSV, METADATA_CSV)}
  labels = read_labels(paths[LABELS_CSV], problems)
  metadata = read_metadata(paths[METADATA_CSV], problems)
  images = []
  for where, values in chexpert.csv_rows(paths[SPLIT_CSV], ("dicom_id", "study_id",
                                                            "subject_id", "split")):
    if "_error" in values:
      problems.report("bad_row", where, values["_error"])
      continue
    if not _ids_ok(values, where, problems):
      continue
    dicom, study = values["dicom_id"].strip(), values["study_id"].strip()
    subject, split = values["subject_id"].strip(), values["split"].strip()
    if split not in SPLITS:
      problems.report("bad_row", where, f"split is {split!r} (expected one of {list(SPLITS)})")
    elif dicom not in metadata:
      problems.report("unknown_image", where, f"dicom_id {dicom} is not in {METADATA_CSV}")
    elif metadata[dicom][:2] != (subject, study):
      problems.report("bad_row", where, f"dicom_id {dicom} belongs to subject "
                      f"{metadata[dicom][0]}, study {metadata[dicom][1]} in {METADATA_CSV}")
    elif study not in labels:
      problems.report("no_labels", where, f"study {study} has no row in {LABELS_CSV}")
    elif labels[study][0] != subject:
      problems.report("bad_row", where, f"study {study} belongs to subject "
                      f"{labels[study][0]} in {LABELS_CSV}")
    else:
      images.append(Image(where, dicom, subject, study, split, metadata[dicom][2],
                          labels[study][1]))
  return images, paths


def read_report(image: Image, root: str, problems: Problems) -> str | None:
  """The report text of the image's study, or None (reported) if missing or empty."""
  path = image.report_path(root)
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except FileNotFoundError:
    problems.report("missing_report", image.where, f"{path}: no such report file")
    return None
  if not text.strip():
    problems.report("empty_report", path, "the report is empty")
    return None
  return text


# ---------------------------------------------------------------------------- check / prepare

def check(src: str, labels_only: bool = False, problems: Problems | None = None,
          reports: str | None = None) -> dict:
  """Validates the source and returns statistics per official split ("sources": train,
  validate, test), per image; writes nothing. Unless labels_only, images are looked up and
  reports read (the `fallback_text` row counts studies with none of the kept sections)."""
  problems = problems or Problems()
  images, _ = read_images(src, problems)
  root = reports_root(src, reports)
  stats = {"name": NAME, "root": src, "sources": {}, "classes": list(CLASSES)}
  texts: dict[str, str | None] = {}
  for split in SPLITS:
    rows = [im for im in images if im.split == split]
    entry = {"rows": len(rows), "frontal": sum(im.frontal for im in rows),
             "studies": len({im.study_id for im in rows}),
             "patients": len({im.subject_id for im in rows}),
             "missing_images": None, "fallback_text": None}
    if not labels_only:
      entry["missing_images"] = 0
      for im in rows:
        if im.study_id not in texts:
          report = read_report(im, root, problems)
          texts[im.study_id] = None if report is None else \
              ("" if clinical_sections(report) else "fallback")
        if not os.path.exists(im.image_path(src)):
          entry["missing_images"] += 1
          problems.report("missing_image", im.where, f"{im.image_path(src)}: no such image file")
      entry["fallback_text"] = sum(texts[s] == "fallback" for s in {im.study_id for im in rows})
    entry["labels"] = chexpert.label_counts(
        np.stack([im.raw for im in rows]) if rows else np.zeros((0, len(CLASSES)), np.float32))
    stats["sources"][split] = entry
  stats["skipped"] = problems.summary()
  return stats


def prepare(src: str, out: str, image_size: int = 224, problems: Problems | None = None,
            policy=chexpert.DEFAULT_POLICY, frontal_only: bool = True,
            reports: str | None = None, num_workers: int | None = None) -> dict:
  """Writes train / val / test records and manifest.json into `out`; returns the manifest."""
  problems = problems or Problems()
  policy = chexpert.parse_policy(policy)
  images, paths = read_images(src, problems)
  if frontal_only:
    images = [im for im in images if im.frontal]
  root = reports_root(src, reports)
  study_reports: dict[str, str | None] = {}   # read once per study; None for a bad report
  items = {name: [] for name in SPLITS.values()}
  for im in images:
    if im.study_id not in study_reports:
      study_reports[im.study_id] = read_report(im, root, problems)
    report = study_reports[im.study_id]
    if report is None:
      continue
    text = clinical_text(report, im.view_position)   # the fallback names this image's view
    labels, mask = chexpert.apply_policy(im.raw, policy)
    items[SPLITS[im.split]].append(chexpert.Item(
        im.where, im.image_path(src), text, labels, mask, "p" + im.subject_id, im.dicom_id))
  splits = {name: chexpert.write_images_split(out, name, split_items, image_size, problems,
                                              num_workers)
            for name, split_items in items.items()}
  manifest = {
      "name": NAME, "task": "multilabel", "classes": list(CLASSES), "image_size": image_size,
      "text_policy": TEXT_POLICY, "uncertainty_policy": policy,
      "blank_label": chexpert.BLANK_LABEL, "views": "frontal" if frontal_only else "all",
      "splits": splits, "skipped": problems.summary(),
      "source_checksums": {os.path.basename(p): records.file_checksum(p)
                           for p in paths.values()}}
  records.write_manifest(out, manifest)
  return manifest
