"""MIMIC-CXR-JPG: reading, leak-free report text, splits and the TFDS build (data/mimic_cxr.py).

The data are credentialed, so the fixture rebuilds the published layout: the three
mimic-cxr-2.0.0-*.csv(.gz) tables with their headers, files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
and the reports' files/pXX/pSUBJECT/sSTUDY.txt.
"""

import csv
import gzip
import io
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from medvlmoe_jax.data import builder, chexpert, mimic_cxr
from medvlmoe_jax.data.sources import BadInputError, Problems

C = {c: i for i, c in enumerate(chexpert.CLASSES)}
# The published column order (alphabetical), unlike CheXpert's.
LABEL_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation",
                "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
                "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                "Pneumothorax", "Support Devices"]
SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
META_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
               "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
               "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
               "PatientOrientationCodeSequence_CodeMeaning"]

REPORTS = {
    # Upper-case headings, the usual layout.
    "50414267": """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is a small left pleural effusion.  No pneumothorax is seen.  Heart size is
 normal.

 IMPRESSION:

 Small left effusion, no pneumothorax.
""",
    # Lower-case headings.
    "53189527": """final report
indication: shortness of breath after a fall down stairs
technique: portable ap
findings: moderate right pneumothorax with mild atelectasis.
impression: right pneumothorax.
""",
    # No INDICATION / HISTORY / COMPARISON at all.
    "57375967": """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)
 TECHNIQUE:  Single frontal view.
 FINDINGS:  Cardiomegaly with pulmonary edema and bilateral effusions.
 IMPRESSION:  Pulmonary edema.
""",
    # HISTORY and COMPARISON, findings run on after a blank line without their heading.
    "51234567": """ HISTORY:  Fever and productive cough for three days.

 COMPARISON:  Chest radiograph from ___.

 Right lower lobe consolidation, concerning for pneumonia.  No effusion.

 IMPRESSION:  Right lower lobe pneumonia.
""",
}
INDICATIONS = {
    "50414267": ["new onset ascites", "eval for infection", "Comparison: None."],
    "53189527": ["shortness of breath after a fall down stairs"],
    "57375967": [],
    "51234567": ["Fever and productive cough for three days", "Chest radiograph from ___."],
}
FINDINGS = {
    "50414267": ["pleural effusion", "pneumothorax", "effusion", "Heart size", "Chest PA"],
    "53189527": ["pneumothorax", "atelectasis", "portable"],
    "57375967": ["Cardiomegaly", "edema", "effusion"],
    "51234567": ["consolidation", "pneumonia", "effusion", "lower lobe"],
}

# (dicom, subject, study, ViewPosition, split)
IMAGES = [
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP", "train"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000764", "57375967", "AP", "validate"),
    ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", "11000011", "51234567", "PA", "test"),
]
# Raw labels per study (blank unless named).
LABELS = {
    "50414267": dict(Pleural_Effusion="1.0", Pneumothorax="0.0", Atelectasis="-1.0"),
    "53189527": dict(Pneumothorax="1.0", Atelectasis="-1.0", Edema="-1.0"),
    "57375967": dict(Cardiomegaly="1.0", Edema="1.0", Pleural_Effusion="-1.0"),
    "51234567": dict(Consolidation="1.0", Pneumonia="-1.0", Pleural_Effusion="0.0"),
}


def _write_table(path, header, rows, gz):
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(header)
  w.writerows(rows)
  if gz:
    with gzip.open(str(path) + ".gz", "wt", newline="") as f:
      f.write(buf.getvalue())
  else:
    with open(path, "w", newline="") as f:
      f.write(buf.getvalue())


def _image_path(src, subject, study, dicom):
  return os.path.join(src, "files", "p" + subject[:2], "p" + subject, "s" + study, dicom + ".jpg")


def _report_path(reports, subject, study):
  return os.path.join(reports, "files", "p" + subject[:2], "p" + subject, "s" + study + ".txt")


def _tables():
  """The three tables' rows as published: {name: (header, rows, gzipped)}."""
  label_rows = []
  for study, values in LABELS.items():
    subject = next(im[1] for im in IMAGES if im[2] == study)
    cells = {k.replace("_", " "): v for k, v in values.items()}
    label_rows.append([subject, study] + [cells.get(c, "") for c in LABEL_HEADER[2:]])
  return {
      mimic_cxr.LABELS_CSV: (LABEL_HEADER, label_rows, True),
      mimic_cxr.SPLIT_CSV: (SPLIT_HEADER, [[d, st, su, sp] for d, su, st, _, sp in IMAGES], True),
      mimic_cxr.METADATA_CSV: (META_HEADER, [
          [d, su, st, "CHEST (PA AND LAT)", view, 3056, 2544, 21800506, 213014.531,
           "CHEST (PA AND LAT)", "postero-anterior" if view == "PA" else "lateral", "Erect"]
          for d, su, st, view, _ in IMAGES], False)}


def _write_tables(src, tables):
  for name, (header, rows, gz) in tables.items():
    _write_table(os.path.join(src, name), header, rows, gz)


def _make_mimic(tmp_path, reports_inside=False):
  src = str(tmp_path / "mimic-cxr-jpg" / "2.0.0")
  reports = os.path.join(src, "mimic-cxr-reports") if reports_inside else \
      str(tmp_path / "mimic-cxr-reports")
  os.makedirs(src)
  _write_tables(src, _tables())
  for i, (dicom, subject, study, _, _) in enumerate(IMAGES):
    path = _image_path(src, subject, study, dicom)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((40, 48), 30 * i + 20, np.uint8)).save(path, format="JPEG",
                                                                   quality=95)
  for study, text in REPORTS.items():
    subject = next(im[1] for im in IMAGES if im[2] == study)
    path = _report_path(reports, subject, study)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)
  return src, reports


def _examples(out, split):
  """{example_id: example} of a built split, read back as a training run reads it."""
  source = builder.load(out).as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  return {e["example_id"].decode(): e for e in examples}


def _build(src, out, **kwargs):
  return builder.build(mimic_cxr.MimicCxr, out, src=src, image_size=16, **kwargs)


# --------------------------------------------------------------------------- report text

@pytest.mark.parametrize("study", list(REPORTS))
def test_text_has_indication_never_findings_or_impression(study):
  text = mimic_cxr.clinical_text(REPORTS[study], "PA")
  for phrase in INDICATIONS[study]:
    assert phrase in text, (phrase, text)
  for phrase in FINDINGS[study]:
    assert phrase.lower() not in text.lower(), (phrase, text)
  for c in chexpert.CLASSES:
    assert c.lower() not in text.lower(), (c, text)


def test_section_extraction():
  assert mimic_cxr.clinical_text(REPORTS["50414267"]) == \
      "Indication: ___F with new onset ascites // eval for infection Comparison: None."
  assert mimic_cxr.clinical_text(REPORTS["53189527"]) == \
      "Indication: shortness of breath after a fall down stairs"
  assert mimic_cxr.clinical_text(REPORTS["57375967"], "AP") == "A chest radiograph, AP view."
  assert mimic_cxr.clinical_text("FINDINGS: no effusion.", "") == "A chest radiograph."
  # A FINDINGS heading run into the line, in any case and with or without a colon, ends it.
  one_line = "INDICATION: ___M with sob. findings: large effusion. IMPRESSION: effusion"
  assert mimic_cxr.clinical_text(one_line) == "Indication: ___M with sob."
  assert mimic_cxr.clinical_text("Indication: sob. Findings effusion") == "Indication: sob."
  # A heading opens a section only at the start of a line.
  assert mimic_cxr.clinical_text("FINAL REPORT EXAMINATION: CHEST INDICATION: ___M with sob."
                                 "\nFINDINGS: large effusion.") == "A chest radiograph."
  # Only the heading's own line: the next one may be findings without a heading.
  assert mimic_cxr.clinical_text("INDICATION: cough.\nThe lungs are clear.\n") == \
      "Indication: cough."
  assert mimic_cxr.clinical_text("INDICATION: ___M with sob\n  and fever.\nFINDINGS\nClear.") == \
      "Indication: ___M with sob"
  assert mimic_cxr.clinical_text("INDICATION:\n  cough.\nFINDINGS\nClear.", "AP") == \
      "A chest radiograph, AP view."
  # "comparison:" inside prose is not a heading, so FINDINGS text cannot come back through it.
  prose = "INDICATION: cough\nFINDINGS: In comparison: new effusion.\n"
  assert mimic_cxr.clinical_text(prose) == "Indication: cough"
  # An unknown capitalised heading ends a kept section too.
  assert mimic_cxr.clinical_text("HISTORY: fever\nWET READ: JXKa effusion\n") == "History: fever"
  assert mimic_cxr.clinical_text("HISTORY: fever\nPORTABLE CHEST: effusion\n") == "History: fever"
  assert mimic_cxr.view_sentence("AP AXIAL") == "A chest radiograph, AP axial view."
  assert mimic_cxr.view_sentence("") == "A chest radiograph."


# Report layouts: where and how the image-reading sections may be headed. The markers qq*
# appear nowhere else; LEAKS must never reach the text, qqind must whenever its heading opens
# a line.
EXCLUDED_HEADINGS = ("FINDINGS", "IMPRESSION", "CONCLUSION", "WET READ", "RECOMMENDATION(S)",
                     "NOTIFICATION", "OPINION", "INTERPRETATION")
HEADING_STYLES = ("{}:", "{} :", "{} -", "{}.", "{}", None)   # None: findings without heading
CASES = (str.upper, str.title, str.lower)                     # of every heading
BREAKS = (" ", "\n", "\n\n")        # between a heading and its text
PLACES = (0, 1, 2)                  # of the findings among [indication, comparison]
JOINS = ("\n", "\n\n", " ")         # between sections; " " runs a section into the line before
LINES = (("\n", ""), ("\r\n", ""), ("\n", " \t"))   # line ending, indent
PREAMBLES = ("", "FINAL REPORT", "EXAMINATION:  CHEST (PA AND LAT) qqexam",
             "WET READ: ___ ___ 3:17 PM  small left effusion qqwet")
INDICATION_HEADINGS = ("INDICATION", "REASON FOR EXAM", "HISTORY")
LEAKS = ("qqfa", "qqfb", "qqexam", "qqwet")


def _layouts():
  """Yields (report, whether the indication opens a line), each distinct report once."""
  seen = set()
  for i, (name, style, case, brk, place, join, (nl, indent), pre) in enumerate(
      itertools.product(EXCLUDED_HEADINGS, HEADING_STYLES, CASES, BREAKS, PLACES, JOINS, LINES,
                        PREAMBLES)):
    if style is None and join == " " and place:
      continue      # findings without a heading on the indication's line: nothing can tell
    body = f"Small left effusion qqfa.{nl}{indent}Heart size is normal qqfb."
    findings = body if style is None else \
        style.format(case(name)) + brk.replace("\n", nl + indent) + body
    blocks = [case(INDICATION_HEADINGS[i % 3]) + ": ___F with cough qqind.",
              case("COMPARISON") + ": ___ qqcmp."]
    blocks.insert(place, findings)
    report = indent + (pre + nl + indent if pre else "") + \
        join.replace("\n", nl + indent).join(blocks) + nl
    if report not in seen:
      seen.add(report)
      yield report, join != " " or place != 0


def test_no_report_layout_leaks_findings_into_the_text():
  leaks, lost, n = [], [], 0
  for report, indication_opens_line in _layouts():
    n += 1
    text = mimic_cxr.clinical_text(report, "PA")
    if any(m in text for m in LEAKS):
      leaks.append((report, text))
    if indication_opens_line and "qqind" not in text:
      lost.append((report, text))
  print(f"{n} layouts, {len(leaks)} leaks")
  assert not leaks, f"{len(leaks)} of {n} layouts leak, e.g. {leaks[0]}"
  assert not lost, f"{len(lost)} of {n} layouts lose the indication, e.g. {lost[0]}"
  assert n >= 30000


# --------------------------------------------------------------------------- build / check

def test_build_follows_split_csv_labels_and_text(tmp_path):
  src, reports = _make_mimic(tmp_path)
  out = str(tmp_path / "out")
  _build(src, out, policy="Atelectasis=u_ones,Edema=u_zeros,default=u_ignore", reports=reports)
  info = builder.load(out).info
  meta = info.metadata
  assert meta["name"] == "mimic_cxr" and meta["task"] == "multilabel"
  assert meta["classes"] == list(chexpert.CLASSES) and meta["views"] == "frontal"
  assert meta["uncertainty_policy"]["Edema"] == "u_zeros" and meta["blank_label"] == 0
  assert meta["text_policy"] == mimic_cxr.MimicCxr.TEXT_POLICY
  assert set(meta["source_checksums"]) == {"mimic-cxr-2.0.0-chexpert.csv.gz",
                                           "mimic-cxr-2.0.0-split.csv.gz",
                                           "mimic-cxr-2.0.0-metadata.csv"}
  assert meta["skipped"]["counts"] == {}
  splits = {s: _examples(out, s) for s in ("train", "val", "test")}
  assert {s: sorted(ex) for s, ex in splits.items()} == {
      "train": sorted([IMAGES[0][0], IMAGES[2][0]]), "val": [IMAGES[3][0]],
      "test": [IMAGES[4][0]]}        # the lateral image is left out
  assert {s: info.splits[s].num_examples for s in splits} == {"train": 2, "val": 1, "test": 1}
  assert meta["patients"] == {"train": 1, "val": 1, "test": 1}

  by_id = {k: e for ex in splits.values() for k, e in ex.items()}
  first = by_id[IMAGES[0][0]]
  assert first["patient_id"] == b"p10000032"
  assert (first["view"], first["study"]) == (b"PA", b"50414267")
  assert first["text"] == b"Indication: ___F with new onset ascites // eval for infection " \
                         b"Comparison: None."
  assert by_id[IMAGES[3][0]]["text"] == b"A chest radiograph, AP view."   # no indication
  assert by_id[IMAGES[4][0]]["text"] == (b"History: Fever and productive cough for three days. "
                                         b"Comparison: Chest radiograph from ___.")
  # The build composes every text with clinical_text (the function tested above).
  for dicom, _, study, view, _ in IMAGES:
    if dicom in by_id:
      assert by_id[dicom]["text"].decode() == mimic_cxr.clinical_text(REPORTS[study], view)
  for e in by_id.values():
    for phrases in FINDINGS.values():
      for phrase in phrases:
        assert phrase.lower() not in e["text"].decode().lower()
    assert e["image"].shape == (16, 16, 3) and e["image"].dtype == np.uint8

  # Labels: mapped by name from the alphabetical columns; blank -> 0; policies per class.
  assert first["labels"][C["Pleural Effusion"]] == 1
  assert first["labels"][C["Atelectasis"]] == 1 and first["label_mask"][C["Atelectasis"]]
  assert first["labels"].sum() == 2 and first["label_mask"].all()
  second = by_id[IMAGES[2][0]]
  assert second["labels"][C["Edema"]] == 0 and second["label_mask"][C["Edema"]]     # u_zeros
  test = by_id[IMAGES[4][0]]
  assert not test["label_mask"][C["Pneumonia"]] and test["label_mask"].sum() == 13  # u_ignore
  assert test["labels"][C["Consolidation"]] == 1 and test["labels"].sum() == 1
  assert abs(float(test["image"].mean()) - 140) < 4

  everything = str(tmp_path / "all")
  _build(src, everything, reports=reports, frontal_only=False)
  lateral = _examples(everything, "train")[IMAGES[1][0]]
  assert lateral["view"] == b"LATERAL" and lateral["text"] == first["text"]
  assert builder.load(everything).info.metadata["views"] == "all"


def test_check_counts_and_default_reports_folder(tmp_path):
  src, _ = _make_mimic(tmp_path, reports_inside=True)
  stats = mimic_cxr.check(src, labels_only=True)
  assert {s: v["rows"] for s, v in stats["sources"].items()} == \
      {"train": 3, "validate": 1, "test": 1}
  assert stats["sources"]["train"]["frontal"] == 2
  assert stats["sources"]["train"]["studies"] == 2
  assert stats["sources"]["train"]["labels"]["Atelectasis"] == \
      {"1": 0, "0": 0, "-1": 3, "blank": 0}
  assert stats["sources"]["train"]["missing_images"] is None
  # As a build writes them: frontal views, Atelectasis -1 masked (u_ignore) or positive.
  assert stats["sources"]["train"]["written"] == 2
  assert stats["sources"]["train"]["written_labels"]["Atelectasis"] == \
      {"pos": 0, "neg": 0, "masked": 2}
  every = mimic_cxr.check(src, labels_only=True, policy="u_ones", frontal_only=False)
  assert every["sources"]["train"]["written"] == 3
  assert every["sources"]["train"]["written_labels"]["Atelectasis"] == \
      {"pos": 3, "neg": 0, "masked": 0}
  full = mimic_cxr.check(src)
  assert full["sources"]["validate"]["missing_images"] == 0
  assert full["sources"]["validate"]["fallback_text"] == 1
  assert full["sources"]["train"]["fallback_text"] == 0
  table = chexpert.format_check(full)
  assert re.search(r"rows +3 +1 +1\n +frontal +2 +1 +1\n +studies +2 +1 +1", table)
  assert re.search(r"fallback text +0 +1 +0\n +written +2 +1 +1\n", table)
  assert re.search(r"Atelectasis +u_ignore +0 +0 +3 +0 +0 +0 +2 +", table)
  # The reports under SRC/mimic-cxr-reports are found without --reports.
  out = str(tmp_path / "out")
  _build(src, out)
  assert _examples(out, "val")[IMAGES[3][0]]["text"] == b"A chest radiograph, AP view."
  assert mimic_cxr.reports_root(src, os.path.join(src, "mimic-cxr-reports", "files")) == \
      os.path.join(src, "mimic-cxr-reports")


def test_empty_report_and_missing_image_stop_naming_the_file(tmp_path):
  src, reports = _make_mimic(tmp_path)
  empty = _report_path(reports, "10000032", "53189527")
  with open(empty, "w") as f:
    f.write("  \n\n")
  lateral = _image_path(src, "10000032", "50414267", IMAGES[1][0])
  os.remove(lateral)
  out = str(tmp_path / "out")
  with pytest.raises(BadInputError, match=re.escape(empty) + ": the report is empty"):
    _build(src, out, reports=reports)
  with pytest.raises(BadInputError, match=re.escape(empty)):
    mimic_cxr.check(src, reports=reports)

  with open(empty, "w") as f:
    f.write(REPORTS["53189527"])
  _build(src, out, reports=reports)        # the missing image is a lateral one, not built
  split_csv = os.path.join(src, mimic_cxr.SPLIT_CSV + ".gz")
  with pytest.raises(BadInputError, match=re.escape(f"{split_csv}, row 3: {lateral}")):
    _build(src, str(tmp_path / "all"), reports=reports, frontal_only=False)
  assert not [f for f in os.listdir(tmp_path) if f.startswith("all")]
  other = _report_path(reports, "11000011", "51234567")
  os.remove(other)
  with pytest.raises(BadInputError, match=re.escape(f"{split_csv}, row 6: {other}: no such "
                                                    "report file")):
    _build(src, str(tmp_path / "all"), reports=reports)
  with open(other, "w") as f:
    f.write(REPORTS["51234567"])

  with open(empty, "w") as f:
    f.write("")
  _build(src, out, reports=reports, frontal_only=False, skip_bad=True)
  meta = builder.load(out).info.metadata
  assert meta["skipped"]["counts"] == {"empty_report": 1, "missing_image": 1}
  assert {s: len(_examples(out, s)) for s in ("train", "val", "test")} == \
      {"train": 1, "val": 1, "test": 1}
  assert list(_examples(out, "train")) == [IMAGES[0][0]]


def _set(table, row, column, value):
  def mutate(tables):
    tables[table][1][row][tables[table][0].index(column)] = value
  return mutate


def _drop(table, row):
  return lambda tables: tables[table][1].pop(row)


def _add(table, values):
  return lambda tables: tables[table][1].append(values)


SPLIT, LABELS_, META = (mimic_cxr.SPLIT_CSV + ".gz", mimic_cxr.LABELS_CSV + ".gz",
                        mimic_cxr.METADATA_CSV)
UNKNOWN = "0000dead-beef0000-00000000-00000000-00000000"


@pytest.mark.parametrize("mutate, file, row, message, skipped", [
    (_set(mimic_cxr.SPLIT_CSV, 1, "split", "holdout"), SPLIT, 3, "split is 'holdout'",
     {"bad_row": 1}),
    (_add(mimic_cxr.SPLIT_CSV, [UNKNOWN, "50414267", "10000032", "train"]), SPLIT, 7,
     f"dicom_id {UNKNOWN} is not in mimic-cxr-2.0.0-metadata.csv", {"unknown_image": 1}),
    (_add(mimic_cxr.SPLIT_CSV, [IMAGES[0][0], "50414267", "10000032", "train"]), SPLIT, 7,
     f"dicom_id {IMAGES[0][0]} appears twice", {"bad_row": 1}),
    (_drop(mimic_cxr.METADATA_CSV, 4), SPLIT, 6,
     f"dicom_id {IMAGES[4][0]} is not in mimic-cxr-2.0.0-metadata.csv", {"unknown_image": 1}),
    (_set(mimic_cxr.SPLIT_CSV, 3, "subject_id", "10000032"), SPLIT, 5, f"dicom_id {IMAGES[3][0]} "
     "belongs to subject 10000764, study 57375967 in mimic-cxr-2.0.0-metadata.csv",
     {"bad_row": 1}),
    (_set(mimic_cxr.SPLIT_CSV, 0, "subject_id", "p10000032"), SPLIT, 2,
     "subject_id is 'p10000032' \\(expected digits\\)", {"bad_row": 1}),
    (_set(mimic_cxr.SPLIT_CSV, 2, "dicom_id", "a/b"), SPLIT, 4, "dicom_id is 'a/b'",
     {"bad_row": 1}),
    (_add(mimic_cxr.SPLIT_CSV, ["x", "1"]), SPLIT, 7, "2 columns, the header has 4",
     {"bad_row": 1}),
    (_drop(mimic_cxr.LABELS_CSV, 3), SPLIT, 6,
     "study 51234567 has no row in mimic-cxr-2.0.0-chexpert.csv", {"no_labels": 1}),
    (_set(mimic_cxr.LABELS_CSV, 2, "subject_id", "10000032"), SPLIT, 5,
     "study 57375967 belongs to subject 10000032 in mimic-cxr-2.0.0-chexpert.csv",
     {"bad_row": 1}),
    # A skipped label row leaves its study's images without labels; counted as such too.
    (_set(mimic_cxr.LABELS_CSV, 0, "Edema", "2.0"), LABELS_, 2, "column 'Edema': '2.0'",
     {"bad_label": 1, "no_labels": 2}),
    (_add(mimic_cxr.LABELS_CSV, ["10000032", "50414267"] + [""] * 14), LABELS_, 6,
     "study 50414267 appears twice", {"bad_row": 1}),
    (_set(mimic_cxr.METADATA_CSV, 0, "study_id", "s50414267"), META, 2,
     "study_id is 's50414267'", {"bad_row": 1, "unknown_image": 1}),
])
def test_bad_tables_stop_naming_file_and_row(tmp_path, mutate, file, row, message, skipped):
  src, reports = _make_mimic(tmp_path)
  tables = _tables()
  mutate(tables)
  _write_tables(src, tables)
  with pytest.raises(BadInputError, match=re.escape(f"{os.path.join(src, file)}, row {row}: ")
                     + message):
    mimic_cxr.check(src, labels_only=True)
  problems = Problems(skip_bad=True)
  stats = mimic_cxr.check(src, labels_only=True, problems=problems)
  assert problems.counts == skipped
  # Every image reported (at its split CSV row) is left out, and only those.
  lost = sum(e.startswith(os.path.join(src, SPLIT)) for ex in problems.examples.values()
             for e in ex)
  assert lost >= 1 or file != SPLIT
  assert sum(v["rows"] for v in stats["sources"].values()) == \
      len(tables[mimic_cxr.SPLIT_CSV][1]) - lost


def test_script_stops_with_one_error_line(tmp_path):
  src, reports = _make_mimic(tmp_path)
  script = os.path.join(ROOT, "data_prep", "mimic_cxr.py")
  run = subprocess.run([sys.executable, script, "--src", src, "--reports", reports, "--out",
                        str(tmp_path / "out"), "--image_size", "16"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert "mimic_cxr: built" in run.stdout and "skipped: none" in run.stdout
  os.remove(_report_path(reports, "10000764", "57375967"))
  for args in (["--check"], ["--out", str(tmp_path / "bad")], ["--policy", "u_maybe"]):
    run = subprocess.run([sys.executable, script, "--src", src, "--reports", reports, *args],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert errors[0] == run.stderr.strip().splitlines()[-1]
    expected = "'u_maybe'" if "--policy" in args else "row 5: " + _report_path(
        reports, "10000764", "57375967") + ": no such report file"
    assert expected in errors[0]
  assert not os.path.exists(tmp_path / "bad")
