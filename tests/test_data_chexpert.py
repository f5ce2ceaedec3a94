"""CheXpert: reading, label policies, leak-free text, and the TFDS build (data/chexpert.py)."""

import csv
import gzip
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED_DATA
from medvlmoe_jax.data import builder, chexpert
from medvlmoe_jax.data.sources import BadInputError, Problems, patient_split

VALID_CSV = os.path.join(SHARED_DATA, "chexpert", "valid.csv")
HEADER = list(chexpert.META_COLUMNS + chexpert.CLASSES)
C = {c: i for i, c in enumerate(chexpert.CLASSES)}
POLICY = "Atelectasis=u_ones,Edema=u_zeros,default=u_ignore"


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
  with (gzip.open(path, "wt", newline="") if str(path).endswith(".gz")
        else open(path, "w", newline="")) as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def _jpeg(path, value, shape=(48, 40)):
  """A grey JPEG of one intensity (so an example can be traced back to its image)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full(shape, value, np.uint8)).save(path, format="JPEG", quality=95)


def _row(patient, value="0.0", view="Frontal", sex="Male", age="60"):
  return [f"CheXpert-v1.0-small/train/patient{patient}/study1/view1_{view.lower()}.jpg",
          sex, age, view, "PA" if view == "Frontal" else ""] + _labels(Edema=value)


# --------------------------------------------------------------------------- the real CSV

def test_check_on_the_real_validation_csv(valid_csv):
  stats = chexpert.check(os.path.dirname(valid_csv), labels_only=True, problems=Problems())
  valid = stats["sources"]["valid"]
  assert (valid["rows"], valid["frontal"], valid["lateral"], valid["patients"]) == \
      (234, 202, 32, 200)
  assert valid["missing_images"] is None          # labels only: images not looked up
  assert list(valid["labels"]) == list(chexpert.CLASSES)
  for c, counts in valid["labels"].items():
    assert sum(counts.values()) == 234, c
  assert valid["labels"]["Fracture"] == {"1": 0, "0": 234, "-1": 0, "blank": 0}
  assert stats["not_found"] == ["train.csv"]
  table = chexpert.format_check(stats)
  assert re.search(r"rows +234\n +frontal +202\n +lateral +32\n +patients +200", table)
  assert valid["written"] == 202 and re.search(r"written +202\n", table)
  # Raw 1 / 0 / -1 / blank, then as written (frontal, u_ignore): pos / neg / masked.
  assert re.search(r"Fracture +u_ignore +0 +234 +0 +0 +0 +202 +0\n", table)
  assert "not found: train.csv" in table


def test_src_may_be_the_release_folder_or_its_parent_and_csvs_gzipped(valid_csv, tmp_path):
  release = tmp_path / "CheXpert-v1.0-small"
  release.mkdir()
  with open(valid_csv, "rb") as f, gzip.open(release / "valid.csv.gz", "wb") as g:
    g.write(b"\xef\xbb\xbf" + f.read())             # gzipped, with a BOM
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
    r"C:\data\CheXpert-v1.0-small\valid\patient64541\study1\view1_frontal.jpg",
    "valid/patient64541/study1/view1_frontal.jpg"])
def test_image_path_is_found_whatever_the_prefix(tmp_path, path):
  csv_path = _write_csv(tmp_path / "valid.csv", [[path, "Male", "73", "Frontal", "AP"]
                                                 + _labels()])
  (row,) = chexpert.read_csv(csv_path, Problems())
  assert row.rel_path == "valid/patient64541/study1/view1_frontal.jpg"
  assert (row.patient_id, row.study) == ("patient64541", "patient64541/study1")


def test_sentence_never_names_a_label(valid_csv):
  rows = chexpert.read_csv(valid_csv, Problems())
  texts = {r.text for r in rows}
  for sex in ("Male", "Female", "Unknown", ""):
    for age in (None, 18, 45, 68, 85, 90):
      for view in ("Frontal", "Lateral"):
        for projection in ("AP", "PA", "LL", "RL", "", "Edema", "pleural effusion", "EDEMA"):
          texts.add(rows[0]._replace(sex=sex, age=age, view=view, projection=projection).text)
  label_words = set()
  for c in chexpert.CLASSES:
    label_words.update(re.split(r"[\s_]+", c.lower()))
  for text in texts:
    assert not label_words & set(re.findall(r"[a-z]+", text.lower())), text
  assert rows[0].text == "A 73-year-old male patient, frontal AP view."
  assert rows[2].text == "A 70-year-old male patient, lateral view."
  r = rows[0]._replace(sex="Female", age=85, projection="Edema")
  assert r.text == "An 85-year-old female patient, frontal view."
  assert r._replace(sex="Unknown", age=None, projection="pa").text == \
      "A patient, frontal PA view."


# What --check says a build writes: the view filter and the policy applied (issue 15).
CHECK_ROWS = [  # patient, view, Edema, Atelectasis
    (1, "Frontal", "-1.0", "1.0"), (1, "Lateral", "-1.0", "1.0"), (2, "Frontal", "1.0", ""),
    (3, "Frontal", "", "-1.0"), (4, "Lateral", "0.0", "-1.0")]


def _check_csv(tmp_path):
  rows = [[f"CheXpert-v1.0-small/valid/patient{p}/study1/view1_{view.lower()}.jpg", "Male", "60",
           view, "AP" if view == "Frontal" else ""] + _labels(Edema=e, Atelectasis=a)
          for p, view, e, a in CHECK_ROWS]
  _write_csv(tmp_path / "valid.csv", rows)
  return str(tmp_path)


@pytest.mark.parametrize("policy, frontal_only, written, edema, atelectasis", [
    # Edema raw: p1 -1 (twice), p2 1, p3 blank, p4 0; Atelectasis: p1 1 (twice), p2 blank,
    # p3 -1, p4 -1. As written: (pos, neg, masked).
    ("u_ignore", True, 3, (1, 1, 1), (1, 1, 1)),
    ("u_ones", True, 3, (2, 1, 0), (2, 1, 0)),
    ("u_zeros", True, 3, (1, 2, 0), (1, 2, 0)),
    ("u_ignore", False, 5, (1, 2, 2), (2, 1, 2)),
    ("u_ones", False, 5, (3, 2, 0), (4, 1, 0)),
    ("Edema=u_ones", True, 3, (2, 1, 0), (1, 1, 1)),
])
def test_check_counts_what_the_build_writes(tmp_path, policy, frontal_only, written, edema,
                                            atelectasis):
  stats = chexpert.check(_check_csv(tmp_path), labels_only=True, policy=policy,
                         frontal_only=frontal_only)
  valid = stats["sources"]["valid"]
  assert (valid["rows"], valid["frontal"], valid["written"]) == (5, 3, written)
  assert valid["labels"]["Edema"] == {"1": 1, "0": 1, "-1": 2, "blank": 1}   # raw, unchanged
  assert valid["labels"]["Atelectasis"] == {"1": 2, "0": 0, "-1": 2, "blank": 1}
  as_written = {c: tuple(valid["written_labels"][c].values()) for c in ("Edema", "Atelectasis")}
  assert as_written == {"Edema": edema, "Atelectasis": atelectasis}
  assert all(sum(v.values()) == written for v in valid["written_labels"].values())
  assert stats["views"] == ("frontal" if frontal_only else "all")


def test_script_check_follows_policy_and_frontal_only(tmp_path):
  src = _check_csv(tmp_path)
  run = _script("--src", src, "--check", "--labels_only", "--policy", "Edema=u_ones",
                "--nofrontal_only")
  assert run.returncode == 0, run.stderr
  assert "written: all views" in run.stdout and re.search(r"written +5\n", run.stdout)
  assert re.search(r"Edema +u_ones +1 +1 +2 +1 +3 +2 +0\n", run.stdout), run.stdout
  assert re.search(r"Atelectasis +u_ignore +2 +0 +2 +1 +2 +1 +2\n", run.stdout), run.stdout


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
  assert labels.dtype == np.float32 and mask.dtype == bool

  policy = chexpert.parse_policy(POLICY)
  labels, mask = chexpert.apply_policy(row.raw, policy)
  assert (labels[a], mask[a]) == (1, True)
  assert (labels[e], mask[e]) == (0, True)
  assert not mask[eff] and policy["Pleural Effusion"] == "u_ignore"
  assert chexpert.parse_policy({"pleural_effusion": "U-Ones"})["Pleural Effusion"] == "u_ones"
  assert chexpert.parse_policy("default=u_zeros, Edema = u_ones")["Edema"] == "u_ones"
  assert set(chexpert.parse_policy(None).values()) == {"u_ignore"}
  assert set(chexpert.parse_policy("u_zeros").values()) == {"u_zeros"}


def test_bad_policies_are_rejected():
  with pytest.raises(ValueError, match="unknown class 'Nodule'"):
    chexpert.parse_policy("Nodule=u_ones")
  with pytest.raises(ValueError, match="not one of"):
    chexpert.parse_policy("u_maybe")
  with pytest.raises(ValueError, match="CLASS=POLICY"):
    chexpert.parse_policy("Edema=u_ones,u_zeros")
  with pytest.raises(ValueError, match="unknown class"):   # before any source is read
    chexpert.CheXpert(src="/nowhere", policy="Nodule=u_ones")


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad, message", [
    (_row(2, value="2.0"), "column 'Edema': '2.0' is not a label"),
    (_row(2, value="x"), "column 'Edema': 'x' is not a label"),
    (_row(2)[:-1], "18 columns, the header has 19"),
    (_row(2) + ["1.0"], "20 columns"),
    (_row(2, sex="Other"), "Sex is 'Other'"),
    (_row(2, age="old"), "Age is 'old'"),
    (_row(2, age="-3"), "Age is '-3'"),
    (_row(2, view="Oblique"), "Frontal/Lateral is 'Oblique'"),
    (["images/view1.jpg"] + _row(2)[1:], "Path 'images/view1.jpg' does not end in"),
    (_row(1), "Path .* repeats row 2"),
])
def test_bad_rows_stop_naming_file_and_row(tmp_path, bad, message):
  path = _write_csv(tmp_path / "train.csv", [_row(1), bad, _row(3)])
  with pytest.raises(BadInputError, match=re.escape(f"{path}, row 3: ") + message):
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


# --------------------------------------------------------------------------- build

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


def _examples(out, split):
  """{example_id: example} of a built split, read back as a training run reads it."""
  source = builder.load(out).as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  return {e["example_id"].decode(): e for e in examples}


def test_build_writes_a_dataset_that_reads_back(tmp_path):
  src, release = _make_chexpert(tmp_path)
  out = str(tmp_path / "out")
  builder.build(chexpert.CheXpert, out, src=src, image_size=16, policy=POLICY,
                val_fraction=0.34, seed=0)
  info = builder.load(out).info
  meta = info.metadata
  assert meta["name"] == "chexpert" and meta["task"] == "multilabel"
  assert meta["classes"] == list(chexpert.CLASSES) and meta["image_size"] == 16
  assert meta["uncertainty_policy"]["Atelectasis"] == "u_ones"
  assert meta["uncertainty_policy"]["Pneumonia"] == "u_ignore"
  assert meta["blank_label"] == 0 and meta["views"] == "frontal"
  assert meta["val_split"]["fraction"] == 0.34 and meta["val_split"]["by"] == "patient"
  assert set(meta["source_checksums"]) == {"train.csv", "valid.csv"}
  assert meta["skipped"]["counts"] == {}
  assert info.citation.startswith("@inproceedings{irvin2019chexpert")

  splits = {s: _examples(out, s) for s in ("train", "val", "test")}
  for s, examples in splits.items():
    assert info.splits[s].num_examples == len(examples)
    assert meta["patients"][s] == len({e["patient_id"] for e in examples.values()})
  # Frontal only: 6 train-csv frontals split by patient (2 of 6 patients to val), 2 in test.
  assert len(splits["train"]) + len(splits["val"]) == 6 and len(splits["test"]) == 2
  val_p = {e["patient_id"].decode() for e in splits["val"].values()}
  train_p = {e["patient_id"].decode() for e in splits["train"].values()}
  assert not train_p & val_p and len(val_p) == 2
  assert val_p == patient_split([f"patient{p:05d}" for p, *_ in TRAIN], 0.34, 0)
  assert not [k for s in splits.values() for k in s if "lateral" in k]

  by_id = {k: e for s in splits.values() for k, e in s.items()}
  first = by_id["train/patient00001/study1/view1_frontal.jpg"]
  assert first["patient_id"] == b"patient00001"
  assert first["text"] == b"A 68-year-old female patient, frontal AP view."
  assert (first["view"], first["projection"], first["sex"], first["age"], first["study"]) == \
      (b"Frontal", b"AP", b"Female", 68, b"patient00001/study1")
  assert first["labels"][C["Atelectasis"]] == 1      # -1, u_ones
  assert first["labels"][C["Edema"]] == 1            # a real 1
  assert first["label_mask"].all()
  third = by_id["train/patient00003/study1/view4_frontal.jpg"]
  assert third["text"] == b"A male patient, frontal AP view." and third["age"] == -1
  assert third["labels"][C["Edema"]] == 0 and third["label_mask"][C["Edema"]]   # u_zeros
  fifth = by_id["train/patient00005/study2/view6_frontal.jpg"]
  assert not fifth["label_mask"][C["Pleural Effusion"]]          # u_ignore
  assert fifth["label_mask"].sum() == 13 and fifth["labels"].sum() == 0
  test = by_id["valid/patient64541/study1/view1_frontal.jpg"]
  assert test["labels"][C["Cardiomegaly"]] == 1 and test["labels"].sum() == 1
  label_words = {w for c in chexpert.CLASSES for w in c.lower().split()}
  for e in by_id.values():
    assert not label_words & set(re.findall(r"[a-z]+", e["text"].decode().lower()))
    assert e["labels"].dtype == np.float32 and e["label_mask"].dtype == bool
    assert e["image"].shape == (16, 16, 3) and e["image"].dtype == np.uint8
  assert abs(float(first["image"].mean()) - 20) < 4
  assert abs(float(test["image"].mean()) - 120) < 4

  # The same seed gives the same split; laterals come back on request.
  again = str(tmp_path / "again")
  builder.build(chexpert.CheXpert, again, src=src, image_size=16, val_fraction=0.34, seed=0,
                frontal_only=False)
  assert {e["patient_id"].decode() for e in _examples(again, "val").values()} == val_p
  assert sum(s.num_examples for s in builder.load(again).info.splits.values()) == 10
  assert builder.load(again).info.metadata["views"] == "all"


def test_build_stops_on_missing_or_truncated_images(tmp_path):
  src, release = _make_chexpert(tmp_path)
  missing = release / "train/patient00002/study1/view3_frontal.jpg"
  os.rename(missing, tmp_path / "kept.jpg")
  truncated = release / "valid/patient64542/study1/view2_frontal.jpg"
  data = truncated.read_bytes()
  truncated.write_bytes(data[:len(data) // 2])
  out = str(tmp_path / "out")
  train_csv, valid_csv = str(release / "train.csv"), str(release / "valid.csv")
  with pytest.raises(BadInputError, match=re.escape(f"{train_csv}, row 4: {missing}")):
    builder.build(chexpert.CheXpert, out, src=src, image_size=16, val_fraction=0.0)
  assert not [f for f in os.listdir(tmp_path) if f.startswith("out")]    # nor out.building
  with pytest.raises(BadInputError, match=re.escape(f"{train_csv}, row 4: {missing}")):
    chexpert.check(src)

  problems = Problems(skip_bad=True)
  train = chexpert.check(src, problems=problems)["sources"]["train"]
  assert (train["missing_images"], train["written"]) == (1, 5)    # as the build below
  builder.build(chexpert.CheXpert, out, src=src, image_size=16, val_fraction=0.0,
                skip_bad=True)
  meta = builder.load(out).info.metadata
  assert meta["skipped"]["counts"] == {"missing_image": 1, "unreadable_image": 1}
  assert any(f"{valid_csv}, row 3: {truncated}" in m
             for m in meta["skipped"]["examples"]["unreadable_image"])
  assert {s: len(_examples(out, s)) for s in ("train", "test")} == {"train": 5, "test": 1}
  assert "val" not in builder.load(out).info.splits          # val_fraction 0: no val split

  os.rename(tmp_path / "kept.jpg", missing)
  with pytest.raises(BadInputError, match=re.escape(f"{valid_csv}, row 3: {truncated}") +
                     ".*not a readable image"):
    builder.build(chexpert.CheXpert, out, src=src, image_size=16, val_fraction=0.0)
  assert len(_examples(out, "train")) == 5             # a failed rebuild keeps the old one
  _jpeg(truncated, 130)
  builder.build(chexpert.CheXpert, out, src=src, image_size=16, val_fraction=0.0)
  assert builder.load(out).info.metadata["skipped"]["counts"] == {}
  assert {s: len(_examples(out, s)) for s in ("train", "test")} == {"train": 6, "test": 2}


# --------------------------------------------------------------------------- script

def _script(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "chexpert.py"),
                         *args], capture_output=True, text=True, timeout=120)


def test_script_checks_builds_and_stops_with_one_error_line(tmp_path, valid_csv):
  run = _script("--src", os.path.dirname(valid_csv), "--check", "--labels_only")
  assert run.returncode == 0, run.stderr
  assert re.search(r"rows +234\n +frontal +202\n +lateral +32\n +patients +200", run.stdout)

  src, release = _make_chexpert(tmp_path)
  out = str(tmp_path / "out")
  run = _script("--src", src, "--out", out, "--image_size", "16", "--policy", POLICY)
  assert run.returncode == 0, run.stderr
  assert f"chexpert: built {out}" in run.stdout and "skipped: none" in run.stdout
  assert builder.load(out).info.metadata["uncertainty_policy"]["Edema"] == "u_zeros"

  with open(release / "train.csv") as f:
    rows = list(csv.reader(f))
  rows[3][C["Edema"] + 5] = "maybe"
  _write_csv(release / "train.csv", rows[1:])
  for args in (["--check"], ["--out", str(tmp_path / "bad")],
               ["--check", "--policy", "Nodule=u_ones"]):
    run = _script("--src", src, *args)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert errors[0] == run.stderr.strip().splitlines()[-1]
    expected = "unknown class 'Nodule'" if "--policy" in args else \
        f"{release / 'train.csv'}, row 4: column 'Edema': 'maybe'"
    assert expected in errors[0]
  assert not os.path.exists(tmp_path / "bad")
