"""MIMIC-CXR-JPG 2.0.0 with the MIMIC-CXR reports, as a TFDS builder.

Decisions:
- Labels come per study (every image of a study shares them), are read by column name onto
  `chexpert.CLASSES` (so heads transfer) and follow CheXpert's blank / uncertainty policies.
- Splits are the official ones: train -> train, validate -> val, test -> test.
- Frontal views only by default (ViewPosition PA or AP), as for CheXpert.
- Text: only what a clinician has before reading the image, the INDICATION / HISTORY /
  COMPARISON sections of the report, never FINDINGS or IMPRESSION, from which the labels
  were extracted: only text proven to belong to such a section passes (its heading's own
  line, see `clinical_sections`). A report with none of them gets a sentence naming the view.
- A study without labels, an image missing from the metadata, ids that disagree between
  the tables, a missing or empty report and a missing or unreadable image are bad input:
  an error naming the file (and row), or counted and skipped with skip_bad.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.data import chexpert
from medvlmoe_jax.data.builder import Builder, Example
from medvlmoe_jax.data.sources import Problems, csv_rows

LABELS_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLITS = {"train": "train", "validate": "val", "test": "test"}
FRONTAL = ("PA", "AP")

# ---------------------------------------------------------------------------- report text

# Sections a clinician writes or has before the image is read; aliases -> one name.
_INCLUDED = {
    "indication": "Indication", "indications": "Indication",
    "clinical indication": "Indication", "reason for exam": "Indication",
    "reason for examination": "Indication", "history": "History",
    "clinical history": "History", "comparison": "Comparison", "comparisons": "Comparison"}
# Words of the sections that read the image (findings, impressions, wet read, ...): kept text
# ends at the first word starting with one, in any case, heading or prose alike.
_EXCLUDED = ("finding", "impression", "conclusion", "wet read", "recommendation",
             "notification", "opinion", "interpretation")

# An included heading opening a line, in any case; group 2 is the rest of the line.
_OPENING = re.compile(r"[ \t]*(" + "|".join(re.escape(h).replace(r"\ ", r"[ \t]+") for h in
                                           sorted(_INCLUDED, key=len, reverse=True))
                      + r")[ \t]*:(.*)", re.IGNORECASE)
# Where kept text ends: an excluded word, or a capitalised heading ("TECHNIQUE:", "PA AND
# LATERAL:") run into the line.
_CUT = re.compile(r"(?i:\b(?:" + "|".join(w.replace(" ", r"[\s-]*") for w in _EXCLUDED)
                  + r"))|\b[A-Z][A-Z0-9 ()/&'-]*[A-Z0-9)][ \t]*:")


def clinical_sections(report: str) -> list[tuple[str, str]]:
  """[(section, text)] for the INDICATION / HISTORY / COMPARISON sections of a report.

  Safe by construction, since the labels come from the other sections: a section opens only
  at a heading that starts a line (its name in any case, then a colon) and keeps only the rest
  of that line, up to the first excluded word or capitalised heading. A following line cannot
  be proven to belong to it (headerless findings, a heading without a colon look the same),
  so a wrapped indication loses its tail, by design.
  """
  sections = []
  for line in report.splitlines():
    if m := _OPENING.match(line):
      body = " ".join(_CUT.split(m.group(2), maxsplit=1)[0].split())
      if body:
        sections.append((_INCLUDED[" ".join(m.group(1).split()).lower()], body))
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
  the build calls it for every image)."""
  sections = clinical_sections(report)
  return " ".join(f"{name}: {body}" for name, body in sections) or view_sentence(view_position)


# ---------------------------------------------------------------------------- source tables

class Image(NamedTuple):
  where: str            # "split csv, row N"
  split: str            # train | validate | test (official names)
  dicom_id: str
  subject_id: str
  study_id: str
  view_position: str
  frontal: bool
  raw: np.ndarray       # (C,) float32 in {1, 0, -1, nan}, the study's labels
  image: str            # SRC/files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
  report: str           # REPORTS/files/pXX/pSUBJECT/sSTUDY.txt


def reports_root(src: str, reports: str | None = None) -> str:
  """Where `files/pXX/...txt` lives: --reports (or its parent, if it names `files`), else
  SRC/mimic-cxr-reports if it exists, else SRC."""
  if reports:
    reports = os.path.normpath(reports)
    if os.path.basename(reports) == "files" and not os.path.isdir(os.path.join(reports, "files")):
      return os.path.dirname(reports)
    return reports
  nested = os.path.join(src, "mimic-cxr-reports")
  return nested if os.path.isdir(nested) else src


def _rows(src: str, table: str, required: tuple[str, ...], problems: Problems):
  """A table's well-formed rows as (where, {column: stripped value}); the others reported."""
  path = chexpert.find_file(src, table)
  if path is None:
    raise FileNotFoundError(f"--src {src!r}: neither {table} nor {table}.gz found")
  for where, v in csv_rows(path, required):
    v = {k: x.strip() for k, x in v.items()}
    bad = [f"{k} is {v[k]!r} (expected digits)" for k in ("subject_id", "study_id")
           if k in v and not v[k].isdigit()]
    if "dicom_id" in v and not re.fullmatch(r"[\w.-]+", v["dicom_id"]):
      bad.append(f"dicom_id is {v['dicom_id']!r}")
    if "_error" in v or bad:
      problems.report("bad_row", where, v.get("_error") or bad[0])
    else:
      yield where, v


def read_images(src: str, reports: str, problems: Problems) -> list[Image]:
  """The split CSV's images joined with the metadata (view) and the labels (per study)."""
  labels, images, seen = {}, [], set()
  for where, v in _rows(src, LABELS_CSV, ("subject_id", "study_id") + chexpert.CLASSES, problems):
    if v["study_id"] in labels:
      problems.report("bad_row", where, f"study {v['study_id']} appears twice")
    elif (raw := chexpert.parse_labels(v, where, problems)) is not None:
      labels[v["study_id"]] = (v["subject_id"], raw)
  views = {v["dicom_id"]: (v["subject_id"], v["study_id"], v["ViewPosition"]) for _, v in _rows(
      src, METADATA_CSV, ("dicom_id", "subject_id", "study_id", "ViewPosition"), problems)}
  for where, v in _rows(src, SPLIT_CSV, ("dicom_id", "study_id", "subject_id", "split"), problems):
    dicom, study, subject, split = v["dicom_id"], v["study_id"], v["subject_id"], v["split"]
    meta_subject, meta_study, view = views.get(dicom, (None, None, None))
    label_subject, raw = labels.get(study, (None, None))
    for failed, kind, message in (   # the first that fails is the row's problem
        (split not in SPLITS, "bad_row", f"split is {split!r} (expected one of {list(SPLITS)})"),
        (dicom in seen, "bad_row", f"dicom_id {dicom} appears twice"),
        (view is None, "unknown_image", f"dicom_id {dicom} is not in {METADATA_CSV}"),
        ((meta_subject, meta_study) != (subject, study), "bad_row", f"dicom_id {dicom} belongs "
         f"to subject {meta_subject}, study {meta_study} in {METADATA_CSV}"),
        (raw is None, "no_labels", f"study {study} has no row in {LABELS_CSV}"),
        (label_subject != subject, "bad_row",
         f"study {study} belongs to subject {label_subject} in {LABELS_CSV}")):
      if failed:
        problems.report(kind, where, message)
        break
    else:
      seen.add(dicom)
      folder = os.path.join("files", "p" + subject[:2], "p" + subject, "s" + study)
      images.append(Image(where, split, dicom, subject, study, view, view.upper() in FRONTAL,
                          raw, os.path.join(src, folder, dicom + ".jpg"),
                          os.path.join(reports, folder + ".txt")))
  return images


def read_reports(images: list[Image], problems: Problems) -> dict[str, str | None]:
  """study_id -> its report, read once per study; None (reported) if missing or empty."""
  reports = {}
  for im in images:
    if im.study_id in reports:
      continue
    reports[im.study_id] = None
    try:
      with open(im.report, encoding="utf-8", errors="replace") as f:
        text = f.read()
    except FileNotFoundError:
      problems.report("missing_report", im.where, f"{im.report}: no such report file")
      continue
    if text.strip():
      reports[im.study_id] = text
    else:
      problems.report("empty_report", im.report, "the report is empty")
  return reports


def check(src: str, labels_only: bool = False, problems: Problems | None = None,
          reports: str | None = None, policy: str | dict | None = None,
          frontal_only: bool = True) -> dict:
  """Validates the source and returns statistics per official split, per image, raw and as a
  build with `policy` and `frontal_only` writes them (as chexpert.check); writes nothing.
  Unless labels_only, images are looked up and reports read (`fallback text` counts the
  studies whose report has none of the kept sections)."""
  problems, policy = problems or Problems(), chexpert.parse_policy(policy)
  images = read_images(src, reports_root(src, reports), problems)
  stats = {"name": MimicCxr.name, "root": src, "sources": {}, "classes": list(chexpert.CLASSES),
           **chexpert.policy_metadata(policy, frontal_only)}
  for split in SPLITS:
    rows = [im for im in images if im.split == split]
    texts = {} if labels_only else read_reports(rows, problems)
    missing = set() if labels_only else chexpert.missing_images(
        ((im.where, im.image) for im in rows), problems)
    written = [im for im in rows if (im.frontal or not frontal_only) and im.image not in missing
               and (labels_only or texts[im.study_id] is not None)]
    stats["sources"][split] = {
        "rows": len(rows), "frontal": sum(im.frontal for im in rows),
        "studies": len({im.study_id for im in rows}),
        "patients": len({im.subject_id for im in rows}),
        "missing_images": None if labels_only else len(missing),
        "fallback_text": None if labels_only else sum(
            t is not None and not clinical_sections(t) for t in texts.values()),
        "written": len(written), "labels": chexpert.label_counts([im.raw for im in rows]),
        "written_labels": chexpert.written_counts([im.raw for im in written], policy)}
  stats["skipped"] = problems.summary()
  return stats


class MimicCxr(Builder):
  """MIMIC-CXR-JPG 2.0.0: official train / val / test, report context as the text."""

  name = "mimic_cxr"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "TFDS array_record build; official splits, INDICATION / HISTORY "
                            "/ COMPARISON report sections as the text.",
                   "1.1.0": "The text is a section heading's own line only, cut at any "
                            "findings / impression word: 1.0.0 let findings through after "
                            "a heading without a colon or on the line below an indication."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Both need a credentialed PhysioNet account and the signed data use agreement.
  1. MIMIC-CXR-JPG 2.0.0, https://physionet.org/content/mimic-cxr-jpg/2.0.0/, e.g. with
       wget -r -N -c -np --user USER --ask-password \\
           https://physionet.org/files/mimic-cxr-jpg/2.0.0/
     Its folder (physionet.org/files/mimic-cxr-jpg/2.0.0) is --src:
       SRC/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, the 14 CheXpert labels
       SRC/mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split
       SRC/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, ...
       SRC/files/p10/p10000032/s50414267/<dicom_id>.jpg
  2. The reports, mimic-cxr-reports.zip from MIMIC-CXR 2.0.0,
     https://physionet.org/content/mimic-cxr/2.0.0/, unzipped into SRC/mimic-cxr-reports
     (or anywhere, passed as --reports):
       SRC/mimic-cxr-reports/files/p10/p10000032/s50414267.txt"""
  HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
  CITATION = """\
@article{johnson2019mimiccxrjpg,
  title={MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs},
  author={Johnson, Alistair E. W. and Pollard, Tom J. and Greenbaum, Nathaniel R. and Lungren, Matthew P. and Deng, Chih-ying and Peng, Yifan and Lu, Zhiyong and Mark, Roger G. and Berkowitz, Seth J. and Horng, Steven},
  journal={arXiv preprint arXiv:1901.07042}, year={2019}}
@article{johnson2019mimiccxr,
  title={MIMIC-CXR, a de-identified publicly available database of chest radiographs with free-text reports},
  author={Johnson, Alistair E. W. and Pollard, Tom J. and Berkowitz, Seth J. and Greenbaum, Nathaniel R. and Lungren, Matthew P. and Deng, Chih-ying and Mark, Roger G. and Horng, Steven},
  journal={Scientific Data}, volume={6}, pages={317}, year={2019}}"""
  DESCRIPTION = ("MIMIC-CXR-JPG chest radiographs with the 14 CheXpert labels of their study "
                 "and the clinical context of its report.")
  CLASSES = chexpert.CLASSES
  TEXT_POLICY = ("report sections INDICATION / HISTORY / COMPARISON only, the rest of their "
                 "heading's line up to any findings / impression word (never FINDINGS or "
                 "IMPRESSION); a view sentence when the report has none of them")
  EXTRA = {"view": tfds.features.Text(), "study": tfds.features.Text()}

  def __init__(self, *, policy: str | dict | None = None, frontal_only: bool = True,
               reports: str | None = None, **kwargs):
    self.policy = chexpert.parse_policy(policy)
    self.frontal_only, self.reports = frontal_only, reports
    super().__init__(**kwargs)

  def source_files(self, src: str) -> list[str]:
    # Called after read(), which has found each table.
    return [chexpert.find_file(src, name) for name in (LABELS_CSV, SPLIT_CSV, METADATA_CSV)]

  def metadata(self) -> dict:
    return {**chexpert.policy_metadata(self.policy, self.frontal_only),
            "splits": f"official ({SPLIT_CSV}): train, validate -> val, test"}

  def read(self, src: str) -> dict[str, list[Example]]:
    images = [im for im in read_images(src, reports_root(src, self.reports), self.problems)
              if im.frontal or not self.frontal_only]
    reports = read_reports(images, self.problems)
    out = {split: [] for split in SPLITS.values()}
    for im in (im for im in images if reports[im.study_id] is not None):
      labels, mask = chexpert.apply_policy(im.raw, self.policy)
      out[SPLITS[im.split]].append(Example(
          key=im.dicom_id, where=im.where, image=im.image,
          text=clinical_text(reports[im.study_id], im.view_position),   # names this image's view
          labels=labels, label_mask=mask, patient_id="p" + im.subject_id,
          extra={"view": im.view_position, "study": im.study_id}))
    return {split: examples for split, examples in out.items() if examples}
