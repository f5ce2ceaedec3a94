"""CheXpert reading, label policies, leak-free text and record writing (data/chexpert.py)."""

import csv
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from medvlmoe_jax.data import chexpert, records
from medvlmoe_jax.data.prep import BadInputError, Problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
VALID_CSV = os.path.join(DATA, "chexpert", "valid.csv")
HEADER = list(chexpert.META_COLUMNS + chexpert.CLASSES)
C = {c: i for i, c in enumerate(chexpert.CLASSES)}


@pytest.fixture(scope="module")
def valid_csv():
  if not os.path.exists(VALID_CSV):
    pytest.fail(f"expected the real CheXpert valid.csv at {VALID_CSV} (the shared data folder "
                "../shared/data next to the project root)")
  return VALID_CSV


def _labels(**values) -> list[str]:
  """The 14 label cells: blank unless given (keys use '_' for ' ')."""
  cells = {c: "" for c in chexpert.CLASSES}
  for key, value in values.items():
    cells[key.replace("_", " ")] = value
  return [cells[c] for c in chexpert.CLASSES]


def _write_csv(path, rows, header=HEADER):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def _jpeg(path, value, shape=(48, 40)):
  """A grey JPEG of one intensity (so a record can be traced back to its image)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full(shape, value, np.uint8)).save(path, format="JPEG", quality=95)


# --------------------------------------------------------------------------- the real CSV

def test_check_on_the_real_validation_csv(valid_csv):
  stats = chexpert.check(os.path.dirname(valid_csv), labels_only=True, problems=Problems())
  valid = stats["sources"]["valid"]
  assert valid["rows"] == 234
  assert valid["frontal"] == 202 and valid["lateral"] == 32
  assert valid["patients"] == 200
  assert valid["missing_images"] is None          # labels only: images not looked up
  assert list(valid["labels"]) == list(chexpert.CLASSES)
  for c, counts in valid["labels"].items():
    assert sum(counts.values()) == 234, c
  assert valid["labels"]["Fracture"] == {"1": 0, "0": 234, "-1": 0, "blank": 0}
  assert stats["not_found"] == ["train.csv"]
  table = chexpert.format_check(stats)
  assert "Support Devices" in table and "234" in table


def test_src_may_be_the_release_folder_or_its_parent(valid_csv, tmp_path):
  release = tmp_path / "CheXpert-v1.0-small"
  release.mkdir()
  (release / "valid.csv").write_bytes(open(valid_csv, "rb").read())
  assert chexpert.find_root(str(tmp_path)) == str(release)
  assert chexpert.find_root(str(release)) == str(release)
  stats = chexpert.check(str(tmp_path), labels_only=True)
  assert stats["sources"]["valid"]["rows"] == 234
  with pytest.raises(FileNotFoundError, match="valid.csv"):
    chexpert.find_root(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("path", [
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
    "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg",
    "/home/someone/data/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
    "valid/patient64541/study1/view1_frontal.jpg"])
def test_image_path_is_found_whatever_the_prefix(path):
  assert chexpert.image_rel_path(path) == "valid/patient64541/study1/view1_frontal.jpg"


def test_sentence_never_names_a_label(valid_csv):
  rows = chexpert.read_csv(valid_csv, Problems())
  texts = {r.text for r in rows}
  for sex in ("Male", "Female", "Unknown", ""):
    for age in (None, 18, 45, 68, 85, 90):
      for view in ("Frontal", "Lateral"):
        for projection in ("AP", "PA", "LL", "RL", "", "Edema", "pleural effusion"):
          texts.add(chexpert.sentence(sex, age, view, projection))
  label_words = set()
  for c in chexpert.CLASSES:
    label_words.update(re.split(r"[\s_]+", c.lower()))
  for text in texts:
    normal = " ".join(text.replace("_", " ").lower().split())
    for c in chexpert.CLASSES:
      assert " ".join(c.replace("_", " ").lower().split()) not in normal, (c, text)
    assert not label_words & set(re.findall(r"[a-z]+", normal)), text
  assert chexpert.sentence("Female", 68, "Frontal", "AP") == \
      "A 68-year-old female patient, frontal AP view."
  assert chexpert.sentence("Male", 85, "Lateral", "") == \
      "An 85-year-old male patient, lateral view."
  assert chexpert.sentence("Unknown", None, "Frontal", "PA") == "A patient, frontal PA view."
  assert rows[0].text == "A 73-year-old male patient, frontal AP view."


# --------------------------------------------------------------------------- labels

def test_label_values_and_blank():
  assert chexpert.parse_label("1.0") == 1 and chexpert.parse_label("0") == 0
  assert chexpert.parse_label("-1.0") == -1 and math.isnan(chexpert.parse_label(" "))
  for bad in ("2.0", "x", "nan", "0.5"):
    with pytest.raises(ValueError, match="expected 1, 0, -1 or blank"):
      chexpert.parse_label(bad)


def test_uncertainty_policies_on_rows_with_uncertain_and_blank(tmp_path):
  path = _write_csv(tmp_path / "valid.csv", [
      ["CheXpert-v1.0-small/valid/patient1/study1/view1_frontal.jpg", "Female", "50", "Frontal",
       "AP"] + _labels(Atelectasis="-1.0", Edema="-1.0", Cardiomegaly="1.0",
                       Pneumonia="0.0", Pleural_Effusion="-1")])
  (row,) = chexpert.read_csv(path, Problems())
  a, e, card, pn, eff, frac = (C[c] for c in ("Atelectasis", "Edema", "Cardiomegaly",
                                              "Pneumonia", "Pleural Effusion", "Fracture"))
  assert row.raw[a] == -1 and row.raw[card] == 1 and math.isnan(row.raw[frac])

  labels, mask = chexpert.apply_policy(row.raw, chexpert.parse_policy("u_ones"))
  assert labels[a] == labels[e] == labels[eff] == 1 and mask.all()
  labels, mask = chexpert.apply_policy(row.raw, chexpert.parse_policy("u_zeros"))
  assert labels[a] == labels[e] == labels[eff] == 0 and mask.all()
  labels, mask = chexpert.apply_policy(row.raw, chexpert.parse_policy("u_ignore"))
  assert not mask[a] and not mask[e] and not mask[eff] and mask.sum() == 11
  # Blank = not mentioned = negative, in the loss whatever the policy; 1 and 0 untouched.
  assert labels[frac] == 0 and mask[frac] and labels[card] == 1 and labels[pn] == 0

  policy = chexpert.parse_policy("Atelectasis=u_ones,edema=u_zeros,default=u_ignore")
  labels, mask = chexpert.apply_policy(row.raw, policy)
  assert (labels[a], mask[a]) == (1, True)
  assert (labels[e], mask[e]) == (0, True)
  assert mask[eff] is np.False_
  assert policy["Pleural Effusion"] == "u_ignore"
  assert chexpert.parse_policy({"pleural_effusion": "U-Ones"})["Pleural Effusion"] == "u_ones"


def test_bad_policies_are_rejected():
  with pytest.raises(ValueError, match="unknown class"):
    chexpert.parse_policy("Nodule=u_ones")
  with pytest.raises(ValueError, match="not one of"):
    chexpert.parse_policy("u_maybe")
  with pytest.raises(ValueError, match="CLASS=POLICY"):
    chexpert.parse_policy("Edema=u_ones,u_zeros")


# --------------------------------------------------------------------------- bad input

def _row(patient, value="0.0", view="Frontal"):
  return [f"CheXpert-v1.0-small/train/patient{patient}/study1/view1_{view.lower()}.jpg",
          "Male", "60", view, "PA" if view == "Frontal" else ""] + _labels(Edema=value)


@pytest.mark.parametrize("bad, row_no, message", [
    (_row(2, value="2.0"), 3, "'Edema'.*'2.0'"),
    (_row(2, value="x"), 3, "'Edema'.*'x'"),
    (_row(2)[:-1], 3, "18 columns, the header has 19"),
    (_row(2) + ["1.0"], 3, "20 columns"),
])
def test_bad_rows_stop_naming_file_and_row(tmp_path, bad, row_no, message):
  path = _write_csv(tmp_path / "train.csv", [_row(1), bad, _row(3)])
  with pytest.raises(BadInputError, match=re.escape(f"{path}, row {row_no}:") + ".*" + message):
    chexpert.read_csv(path, Problems())
  problems = Problems(skip_bad=True)
  rows = chexpert.read_csv(path, problems)
  assert [r.patient_id for r in rows] == ["patient1", "patient3"]
  assert sum(problems.counts.values()) == 1


def test_bad_rows_are_counted_with_skip_bad(tmp_path):
  path = _write_csv(tmp_path / "train.csv", [
      _row(1), _row(2, value="2.0"), _row(3, value="x"), _row(4)[:-2], _row(5)])
  problems = Problems(skip_bad=True)
  rows = chexpert.read_csv(path, problems)
  assert [r.patient_id for r in rows] == ["patient1", "patient5"]
  assert problems.counts == {"bad_label": 2, "bad_row": 1}


def test_wrong_header_is_an_error(tmp_path):
  path = _write_csv(tmp_path / "valid.csv", [], header=HEADER[:-1])
  with pytest.raises(BadInputError, match=r"row 1: header lacks column\(s\) \['Support Devices'\]"):
    chexpert.read_csv(path, Problems())


# --------------------------------------------------------------------------- prepare

TRAIN = [  # patient, study, view, sex, age, AP/PA, labels; intensity = 10 * index + 20
    (1, 1, "Frontal", "Female", "68", "AP", dict(Atelectasis="-1.0", Edema="1.0")),
    (1, 1, "Lateral", "Female", "68", "", dict(Atelectasis="-1.0", Edema="1.0")),
    (2, 1, "Frontal", "Male", "45", "PA", dict(No_Finding="1.0")),
    (3, 1, "Frontal", "Male", "0", "AP", dict(Edema="-1.0", Support_Devices="1.0")),
    (4, 1, "Frontal", "Unknown", "80", "PA", dict(Pneumothorax="1.0", Fracture="0.0")),
    (5, 2, "Frontal", "Female", "33", "AP", dict(Pleural_Effusion="-1.0")),
    (6, 1, "Frontal", "Male", "77", "AP", dict(Cardiomegaly="1.0")),
]
VALID = [
    (64541, 1, "Frontal", "Male", "73", "AP", dict(Cardiomegaly="1.0", Edema="0.0")),
    (64542, 1, "Frontal", "Female", "70", "PA", dict(Support_Devices="1.0")),
    (64542, 1, "Lateral", "Female", "70", "", dict(Support_Devices="1.0")),
]


def _make_chexpert(tmp_path):
  """The published layout: SRC/CheXpert-v1.0-small/{train,valid}.csv and the JPEGs."""
  release = tmp_path / "src" / "CheXpert-v1.0-small"
  for split, table in (("train", TRAIN), ("valid", VALID)):
    rows = []
    for i, (patient, study, view, sex, age, proj, labels) in enumerate(table):
      rel = f"{split}/patient{patient:05d}/study{study}/view{i + 1}_{view.lower()}.jpg"
      _jpeg(release / rel, 10 * i + 20 + (100 if split == "valid" else 0))
      rows.append([f"CheXpert-v1.0-small/{rel}", sex, age, view, proj] + _labels(**labels))
    _write_csv(release / f"{split}.csv", rows)
  return str(tmp_path / "src"), release


def _read_records(out, manifest, split):
  from array_record.python.array_record_data_source import ArrayRecordDataSource
  source = ArrayRecordDataSource([os.path.join(out, f) for f in manifest["splits"][split]["files"]])
  return [records.decode_example(source[i]) for i in range(len(source))]


POLICY = "Atelectasis=u_ones,Edema=u_zeros,default=u_ignore"


def test_prepare_writes_decodable_records(tmp_path):
  src, release = _make_chexpert(tmp_path)
  out = str(tmp_path / "out")
  manifest = chexpert.prepare(src, out, image_size=16, problems=Problems(), policy=POLICY,
                              val_fraction=0.34, seed=0)
  assert manifest == records.read_manifest(out)
  for key in ("name", "task", "classes", "image_size", "text_policy", "uncertainty_policy",
              "splits", "skipped", "source_checksums"):
    assert key in manifest
  assert manifest["task"] == "multilabel" and manifest["classes"] == list(chexpert.CLASSES)
  assert manifest["uncertainty_policy"]["Atelectasis"] == "u_ones"
  assert manifest["uncertainty_policy"]["Pneumonia"] == "u_ignore"
  assert set(manifest["source_checksums"]) == {"train.csv", "valid.csv"}
  assert manifest["skipped"]["counts"] == {}

  splits = {s: _read_records(out, manifest, s) for s in ("train", "val", "test")}
  for s, examples in splits.items():
    assert manifest["splits"][s]["num_examples"] == len(examples)
    assert manifest["splits"][s]["num_patients"] == len({e["patient_id"] for e in examples})
  # Frontal only: 6 train-csv frontals split by patient (2 of 6 patients to val), 2 in test.
  assert len(splits["train"]) + len(splits["val"]) == 6 and len(splits["test"]) == 2
  assert manifest["splits"]["val"]["num_patients"] == 2
  train_p = {e["patient_id"] for e in splits["train"]}
  val_p = {e["patient_id"] for e in splits["val"]}
  assert not train_p & val_p
  assert all("lateral" not in e["example_id"] for s in splits.values() for e in s)

  by_id = {e["example_id"]: e for s in splits.values() for e in s}
  first = by_id["train/patient00001/study1/view1_frontal.jpg"]
  assert first["patient_id"] == "patient00001"
  assert first["text"] == "A 68-year-old female patient, frontal AP view."
  assert first["labels"][C["Atelectasis"]] == 1      # -1, u_ones
  assert first["labels"][C["Edema"]] == 1            # a real 1
  assert first["label_mask"].all()
  third = by_id["train/patient00003/study1/view4_frontal.jpg"]
  assert third["text"] == "A male patient, frontal AP view."     # age 0 = unknown
  assert third["labels"][C["Edema"]] == 0 and third["label_mask"][C["Edema"]]   # u_zeros
  fifth = by_id["train/patient00005/study2/view6_frontal.jpg"]
  assert not fifth["label_mask"][C["Pleural Effusion"]]          # u_ignore
  assert fifth["label_mask"].sum() == 13 and fifth["labels"].sum() == 0
  test = by_id["valid/patient64541/study1/view1_frontal.jpg"]
  assert test["labels"][C["Cardiomegaly"]] == 1 and test["labels"].sum() == 1
  for e in by_id.values():
    assert e["labels"].dtype == np.float32 and e["label_mask"].dtype == bool
    image = records.decode_image(e["image"])
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
  assert abs(float(records.decode_image(first["image"]).mean()) - 20) < 4
  assert abs(float(records.decode_image(test["image"]).mean()) - 120) < 4

  # The same seed gives the same split; laterals come back on request.
  again = chexpert.prepare(src, str(tmp_path / "again"), image_size=16, policy=POLICY,
                           val_fraction=0.34, seed=0, frontal_only=False)
  val_again = {e["patient_id"] for e in _read_records(str(tmp_path / "again"), again, "val")}
  assert val_again == val_p
  assert sum(again["splits"][s]["num_examples"] for s in again["splits"]) == 10


def test_prepare_stops_on_missing_or_truncated_images(tmp_path):
  src, release = _make_chexpert(tmp_path)
  missing = release / "train/patient00002/study1/view3_frontal.jpg"
  os.remove(missing)
  truncated = release / "valid/patient64542/study1/view2_frontal.jpg"
  data = truncated.read_bytes()
  truncated.write_bytes(data[:len(data) // 2])
  train_csv = str(release / "train.csv")
  with pytest.raises(BadInputError, match=re.escape(f"{train_csv}, row 4: {missing}")):
    chexpert.prepare(src, str(tmp_path / "out"), image_size=16, val_fraction=0.0)
  with pytest.raises(BadInputError, match=re.escape(f"{train_csv}, row 4: {missing}")):
    chexpert.check(src)

  _jpeg(missing, 40)
  valid_csv = str(release / "valid.csv")
  with pytest.raises(BadInputError, match=re.escape(f"{valid_csv}, row 3: {truncated}") +
                     ".*not a readable image"):
    chexpert.prepare(src, str(tmp_path / "out"), image_size=16, val_fraction=0.0)

  os.remove(missing)
  problems = Problems(skip_bad=True)
  manifest = chexpert.prepare(src, str(tmp_path / "out"), image_size=16, problems=problems,
                              val_fraction=0.0)
  assert problems.counts == {"missing_image": 1, "bad_image": 1}
  assert manifest["skipped"]["counts"] == {"missing_image": 1, "bad_image": 1}
  assert manifest["splits"]["train"]["num_examples"] == 5
  assert manifest["splits"]["test"]["num_examples"] == 1
  assert len(_read_records(str(tmp_path / "out"), manifest, "test")) == 1
  assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".spool")]
  stats = chexpert.check(src, problems=Problems(skip_bad=True))
  assert stats["sources"]["train"]["missing_images"] == 1
