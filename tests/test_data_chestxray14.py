"""ChestX-ray14: the real label table and split lists, and a small source in the published
layout (made here from the two real images and a few synthetic ones) built end to end."""

import gzip
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED_DATA
from medvlmoe_jax.data import builder
from medvlmoe_jax.data import chestxray14 as cx
from medvlmoe_jax.data.preprocess import load_image, resize_and_crop
from medvlmoe_jax.data.sources import BadInputError, Problems, csv_rows, md5

REAL = os.path.join(SHARED_DATA, "chestxray14")
REAL_CSV = os.path.join(REAL, "Data_Entry_2017_v2020.csv.gz")
REAL_IMAGES = ("00000001_000.png", "00027426_000.png")
SCRIPT = os.path.join(ROOT, "data_prep", "chestxray14.py")
SIZE = 64


def _real():
  needed = [REAL_CSV, os.path.join(REAL, "train_val_list.txt"),
            os.path.join(REAL, "test_list.txt")] + [os.path.join(REAL, "images", n)
                                                    for n in REAL_IMAGES]
  absent = [p for p in needed if not os.path.exists(p)]
  if absent:
    pytest.fail(f"the shared ChestX-ray14 files are missing ({absent[0]}); they live in "
                f"../shared/data next to the project root ({SHARED_DATA})")
  return REAL


@pytest.fixture(scope="module")
def real_source():
  return cx.read_source(_real(), Problems())


@pytest.fixture(scope="module")
def real_stats():
  return cx.check(_real(), labels_only=True)


def test_real_split_sizes_and_patients(real_stats):
  s = real_stats["splits"]
  assert s["train_val"]["num_images"] == 86_524
  assert s["test"]["num_images"] == 25_596
  assert real_stats["csv"] == "Data_Entry_2017_v2020.csv.gz"
  assert real_stats["csv_rows"] == 112_120 and real_stats["unlisted_images"] == 0
  assert s["train"]["num_images"] + s["val"]["num_images"] == 86_524
  # The official split is patient-wise, and so is the carved val.
  assert real_stats["patient_overlap"] == {"train_val/test": 0, "train/val": 0,
                                           "train/test": 0, "val/test": 0}
  assert real_stats["patient_disjoint"]
  assert s["train_val"]["num_patients"] == 28_008 and s["test"]["num_patients"] == 2_797
  assert s["val"]["num_patients"] == round(0.1 * 28_008)
  assert s["train"]["num_patients"] + s["val"]["num_patients"] == 28_008
  assert real_stats["skipped"]["counts"] == {} and real_stats["images"] is None
  report = cx.format_report(real_stats)
  assert re.search(r"train_val\s+86,524\s+28,008", report)
  assert re.search(r"test\s+25,596\s+2,797", report) and "(patient-disjoint)" in report


def test_real_label_counts(real_stats):
  # Counted straight from the table: 141 train_val + 86 test Hernia images.
  counts = real_stats["label_counts"]
  assert counts["total"]["Hernia"] == 227
  assert (counts["train_val"]["Hernia"], counts["test"]["Hernia"]) == (141, 86)
  assert counts["total"]["Infiltration"] == 19_894
  assert real_stats["no_finding"]["total"] == 60_361
  for c in cx.CLASSES:
    assert counts["train"][c] + counts["val"][c] == counts["train_val"][c]


def test_val_carving_is_deterministic(real_source, real_stats):
  a = real_source.splits(0.1, seed=0)
  assert a == real_source.splits(0.1, seed=0)
  assert len(a["val"]) == real_stats["splits"]["val"]["num_images"]
  assert not real_source.patients(a["train"]) & real_source.patients(a["val"])
  b = real_source.splits(0.1, seed=1)
  assert set(a["val"]) != set(b["val"])
  with pytest.raises(ValueError, match="val_fraction"):
    real_source.splits(1.0, seed=0)


def test_sentence_never_names_a_label():
  _real()
  forbidden = [c.lower().replace("_", " ") for c in cx.CLASSES] + ["finding"]
  pattern = re.compile("|".join(map(re.escape, forbidden)))
  n = 0
  for _, row in csv_rows(REAL_CSV, ()):
    text, extra = cx.describe(row["Patient Age"], row["Patient Gender"], row["View Position"])
    assert not pattern.search(text.lower()), (row["Image Index"], text)
    age = int(row["Patient Age"])
    assert extra["age"] == age
    assert (f" {age}-year-old " if age >= 1 else "under 1 year old") in text, text
    sex = {"M": "male", "F": "female"}[row["Patient Gender"]]
    assert re.search(rf"\b{sex}\b", text) and extra["sex"] == row["Patient Gender"], text
    assert f"{row['View Position']} view" in text and extra["view"] == row["View Position"]
    n += 1
  assert n == 112_120


def test_sentence_odd_values():
  assert cx.describe("58", "M", "PA") == (
      "A 58-year-old male patient, PA view.", {"view": "PA", "sex": "M", "age": 58})
  assert cx.describe("81", "F", "AP")[0] == "An 81-year-old female patient, AP view."
  assert cx.describe("058Y", "F", "AP")[0] == "A 58-year-old female patient, AP view."
  assert cx.describe("414", "M", "PA") == (
      "A male patient, PA view.", {"view": "PA", "sex": "M", "age": -1})
  assert cx.describe("", "", "") == ("A patient.", {"view": "", "sex": "", "age": -1})
  assert cx.describe("0", "F", "pa")[0] == "A female patient under 1 year old, PA view."
  assert cx.describe("30", "female", " LL ")[0] == "A 30-year-old female patient, lateral view."
  # Free text in a column never reaches the sentence or the features.
  assert cx.describe("n/a", "Hernia", "Mass") == ("A patient.", {"view": "", "sex": "",
                                                                 "age": -1})
  assert cx.parse_age("006M") == 0 and cx.parse_age("121") is None
  assert cx.parse_age("120") == 120 and cx.parse_age(" 3 ") == 3 and cx.parse_age("-3") is None


# ---------------------------------------------------------------- a source in the published layout

# (name, labels, patient, age, sex, view, image source, folder); rows 2..7 of the CSV.
ROWS = [
    ("00001001_000.png", "Cardiomegaly|Emphysema", "1001", "58", "M", "PA", REAL_IMAGES[0],
     "images_001/images"),
    ("00001001_001.png", "Cardiomegaly", "1001", "59", "M", "PA", "grey", "images_001/images"),
    ("00001002_000.png", "No Finding", "1002", "8", "F", "AP", REAL_IMAGES[1],
     "images_002/images"),
    ("00001003_000.png", "Hernia|Pleural_Thickening", "1003", "414", "F", "AP", "rgba",
     "images_002/images"),
    ("00001004_000.png", "Effusion", "1004", "45", "M", "PA", "grey16", "images_003"),
    ("00001005_000.png", "No Finding", "1005", "70", "F", "PA", "grey", "images"),
]
TRAIN_VAL = [r[0] for r in ROWS[:4]]
TEST = [r[0] for r in ROWS[4:]]
CSV = "Data_Entry_2017_v2020.csv"


def _header():
  with gzip.open(REAL_CSV, "rt", newline="") as f:
    return f.readline().rstrip("\r\n")


def _write_csv(src, rows, name=CSV, trailing=""):
  opener = gzip.open if name.endswith(".gz") else open
  with opener(os.path.join(src, name), "wt", newline="", encoding="utf-8-sig") as f:
    f.write(_header() + "\n")
    for name_, labels, pid, age, sex, view, *_ in rows:
      f.write(f"{name_},{labels},0,{pid},{age},{sex},{view},2500,2048,0.168,0.168{trailing}\n")


def _write_list(src, filename, names):
  with open(os.path.join(src, filename), "w") as f:
    f.write("\n".join(names))  # as NIH ships them: no trailing newline


@pytest.fixture
def src(tmp_path):
  _real()
  src = str(tmp_path / "src")
  rng = np.random.default_rng(0)
  for name, *_, image, folder in ROWS:
    os.makedirs(os.path.join(src, folder), exist_ok=True)
    path = os.path.join(src, folder, name)
    if image in REAL_IMAGES:
      shutil.copy(os.path.join(REAL, "images", image), path)
    elif image == "grey":
      Image.fromarray(rng.integers(0, 256, (120, 100), dtype=np.uint8)).save(path)
    elif image == "grey16":
      Image.fromarray(rng.integers(0, 65536, (80, 96), dtype=np.uint16)).save(path)
    else:
      Image.fromarray(rng.integers(0, 256, (90, 140, 4), dtype=np.uint8), "RGBA").save(path)
  _write_csv(src, ROWS)
  _write_list(src, "train_val_list.txt", TRAIN_VAL)
  _write_list(src, "test_list.txt", TEST)
  return src


def _build(src, out, **kwargs):
  return builder.build(cx.ChestXray14, str(out), src=src, image_size=SIZE, num_workers=2,
                       **kwargs)


def _read(out, split):
  ds = builder.load(str(out)).as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def test_build_and_load(src, tmp_path):
  out = tmp_path / "out"
  _build(src, out, val_fraction=0.34, seed=0)
  info = builder.load(str(out)).info
  meta = info.metadata
  assert meta["name"] == "chestxray14" and meta["task"] == "multilabel"
  assert meta["classes"] == list(cx.CLASSES) and meta["image_size"] == SIZE
  assert "never from Finding Labels" in meta["text_policy"]
  assert (meta["val_fraction"], meta["seed"], meta["unknown_age"], meta["unlisted_rows"]) == (
      0.34, 0, 1, 0)
  assert "patient" in meta["split_policy"] and meta["skipped"]["counts"] == {}
  assert meta["source_checksums"] == {n: md5(os.path.join(src, n)) for n in
                                      (CSV, "train_val_list.txt", "test_list.txt")}
  assert "CVPR" in info.citation and "ChestX-ray8" in info.citation
  assert "images_001" in cx.ChestXray14.MANUAL_DOWNLOAD_INSTRUCTIONS

  rows = {r[0]: r for r in ROWS}
  seen = {}
  for split in ("train", "val", "test"):
    examples = _read(out, split)
    assert meta["patients"][split] == len({e["patient_id"] for e in examples})
    assert info.splits[split].num_examples == len(examples)
    for e in examples:
      key = e["example_id"].decode()
      seen[key] = split
      name, labels, pid, age, sex, view, image, _ = rows[key]
      want = np.zeros(14, np.float32)
      if labels != "No Finding":
        want[[cx.CLASSES.index(n) for n in labels.split("|")]] = 1
      np.testing.assert_array_equal(e["labels"], want)
      assert e["labels"].dtype == np.float32 and e["label_mask"].all()
      assert e["text"].decode() == cx.describe(age, sex, view)[0]
      assert e["patient_id"].decode() == pid
      assert (e["view"].decode(), e["sex"].decode()) == (view, sex)
      assert int(e["age"]) == (-1 if age == "414" else int(age))
      assert e["image"].shape == (SIZE, SIZE, 3) and e["image"].dtype == np.uint8
      if image in REAL_IMAGES:
        np.testing.assert_array_equal(
            e["image"], resize_and_crop(load_image(os.path.join(REAL, "images", image)), SIZE))
  assert sorted(seen) == sorted(rows)
  assert {n for n, s in seen.items() if s == "test"} == set(TEST)
  # val: one whole patient out of the three train_val ones.
  assert (meta["patients"]["val"], meta["patients"]["train"]) == (1, 2)
  val_patients = {rows[n][2] for n, s in seen.items() if s == "val"}
  train_patients = {rows[n][2] for n, s in seen.items() if s == "train"}
  assert len(val_patients) == 1 and not val_patients & train_patients
  assert val_patients == cx.read_source(src, Problems()).patients(
      cx.read_source(src, Problems()).splits(0.34, 0)["val"])


def test_no_val(src, tmp_path):
  _build(src, tmp_path / "out", val_fraction=0.0)
  splits = builder.load(str(tmp_path / "out")).info.splits
  assert set(splits) == {"train", "test"} and splits["train"].num_examples == 4


def test_check_images(src):
  stats = cx.check(src, labels_only=False, val_fraction=0.34, num_workers=2)
  assert stats["images"] == {"listed": 6, "found": 6, "missing": 0, "unreadable": 0,
                             "readable": 6}
  assert stats["unknown_age"] == 1 and stats["label_counts"]["total"]["Cardiomegaly"] == 2
  assert "images: listed 6, found 6" in cx.format_report(stats)
  os.remove(os.path.join(src, "images", "00001005_000.png"))
  with pytest.raises(BadInputError, match=rf"{CSV}, row 7: image 00001005_000\.png not found"):
    cx.check(src, labels_only=False)
  stats = cx.check(src, labels_only=False, problems=Problems(skip_bad=True))
  assert stats["images"]["missing"] == 1 and stats["skipped"]["counts"] == {"missing_image": 1}
  assert "skipped: missing_image 1" in cx.format_report(stats)
  assert cx.check(src, labels_only=True)["images"] is None


def test_source_variants(src):
  """The 2017 table (trailing comma, gzipped, BOM) is read; v2020 wins when both are there."""
  os.remove(os.path.join(src, CSV))
  _write_csv(src, ROWS, name="Data_Entry_2017.csv.gz", trailing=",")
  stats = cx.check(src, labels_only=False, num_workers=2)
  assert stats["csv"] == "Data_Entry_2017.csv.gz" and stats["csv_rows"] == 6
  assert stats["images"]["readable"] == 6 and stats["skipped"]["counts"] == {}
  _write_csv(src, [r if r[0] != TEST[1] else (r[0], "Hernia", *r[2:]) for r in ROWS])
  stats = cx.check(src, labels_only=True)
  assert stats["csv"] == CSV and stats["label_counts"]["test"]["Hernia"] == 1
  os.remove(os.path.join(src, "test_list.txt"))
  with pytest.raises(FileNotFoundError, match="test_list.txt"):
    cx.check(src, labels_only=True)


def _rows_with(index, **changes):
  rows = [list(r) for r in ROWS]
  for column, value in changes.items():
    rows[index][("name", "labels", "pid", "age", "sex", "view").index(column)] = value
  return rows


def _missing_image(src):
  os.remove(os.path.join(src, "images_002", "images", "00001002_000.png"))


def _truncated_png(src):
  path = os.path.join(src, "images_001", "images", "00001001_000.png")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])


def _shared_patient(src):
  """Patient 1001's third image, listed in test_list.txt."""
  _write_csv(src, _rows_with(5, name="00001001_005.png", pid="1001"))
  os.rename(os.path.join(src, "images", TEST[1]), os.path.join(src, "images", "00001001_005.png"))
  _write_list(src, "test_list.txt", [TEST[0], "00001001_005.png"])


BAD = {  # case: (mutation, file named in the error, where, skipped counts, examples left)
    "missing_image": (_missing_image, CSV, "row 4", {"missing_image": 1}, 5),
    "unreadable_image": (_truncated_png, CSV, "row 2", {"unreadable_image": 1}, 5),
    "wrong_columns": (lambda s: _write_csv(s, _rows_with(1, view="PA,extra")), CSV, "row 3",
                      {"malformed_row": 1}, 5),
    "empty_image_index": (lambda s: _write_csv(s, _rows_with(1, name="")), CSV, "row 3",
                          {"malformed_row": 1, "unknown_image_in_split": 1}, 5),
    "empty_patient_id": (lambda s: _write_csv(s, _rows_with(3, pid=" ")), CSV, "row 5",
                         {"malformed_row": 1}, 5),
    "duplicate_row": (lambda s: _write_csv(s, ROWS + ROWS[:1]), CSV, "row 8",
                      {"duplicate_row": 1}, 6),
    "unknown_label": (lambda s: _write_csv(s, _rows_with(4, labels="Effusion|Pneumonitis")),
                      CSV, "row 6", {"unknown_label": 1}, 5),
    "no_finding_and_other": (lambda s: _write_csv(s, _rows_with(5, labels="No Finding|Hernia")),
                             CSV, "row 7", {"unknown_label": 1}, 5),
    "empty_labels": (lambda s: _write_csv(s, _rows_with(5, labels="")), CSV, "row 7",
                     {"unknown_label": 1}, 5),
    "unknown_image_in_split": (lambda s: _write_list(s, "test_list.txt",
                                                     TEST + ["00009999_000.png"]),
                               "test_list.txt", "line 3", {"unknown_image_in_split": 1}, 6),
    "duplicate_in_split": (lambda s: _write_list(s, "train_val_list.txt",
                                                 TRAIN_VAL + TRAIN_VAL[:1]),
                           "train_val_list.txt", "line 5", {"duplicate_in_split": 1}, 6),
    "image_in_both_splits": (lambda s: _write_list(s, "test_list.txt", TEST + TRAIN_VAL[2:3]),
                             "train_val_list.txt", "line 3", {"image_in_both_splits": 1}, 6),
    "patient_mismatch": (lambda s: _write_csv(s, _rows_with(3, pid="1004")), CSV, "row 5",
                         {"patient_mismatch": 1}, 5),
    "patient_in_both_splits": (_shared_patient,
                               "train_val_list.txt", "line 1",
                               {"patient_in_both_splits": 1}, 4),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case, src, tmp_path):
  mutate, filename, where, counts, left = BAD[case]
  mutate(src)
  strict = tmp_path / "strict"
  with pytest.raises(BadInputError) as err:
    _build(src, strict)
  assert f"{os.path.join(src, filename)}, {where}:" in str(err.value)
  assert "--skip_bad" in str(err.value) and not os.path.exists(strict)
  out = tmp_path / "skip"
  _build(src, out, skip_bad=True)
  meta = builder.load(str(out)).info.metadata
  assert meta["skipped"]["counts"] == counts
  assert f"{where}:" in meta["skipped"]["examples"][next(iter(counts))][0]
  examples = [e for s in ("train", "val", "test") for e in _read(out, s)]
  assert len(examples) == left
  patients = {s: {e["patient_id"] for e in _read(out, s)} for s in ("train", "val", "test")}
  assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
              or patients["val"] & patients["test"])
  if case not in ("missing_image", "unreadable_image"):  # images are not read by --labels_only
    stats = cx.check(src, labels_only=True, problems=Problems(skip_bad=True))
    assert stats["skipped"]["counts"] == counts
    assert stats["splits"]["train_val"]["num_images"] + stats["splits"]["test"]["num_images"] \
        == left


def test_failed_build_leaves_nothing(src, tmp_path):
  out = tmp_path / "out"
  _truncated_png(src)
  with pytest.raises(BadInputError, match=rf"{CSV}, row 2: .*not a readable image"):
    _build(src, out)
  assert sorted(os.listdir(tmp_path)) == ["src"]  # no dataset, no staging folder
  shutil.copy(os.path.join(REAL, "images", REAL_IMAGES[0]),
              os.path.join(src, "images_001", "images", ROWS[0][0]))
  _build(src, out)
  assert sum(len(_read(out, s)) for s in ("train", "val", "test")) == 6
  # A failing rebuild leaves the earlier dataset as it was.
  _write_csv(src, _rows_with(0, labels="Pneumonitis"))
  with pytest.raises(BadInputError, match=rf"{CSV}, row 2:"):
    _build(src, out)
  assert sum(len(_read(out, s)) for s in ("train", "val", "test")) == 6


def _script(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)


def test_script_check_writes_nothing(src, tmp_path):
  out = tmp_path / "never"
  proc = _script("--src", src, "--check", "--labels-only", "--val-fraction=0.34",
                 "--out", str(out))
  assert proc.returncode == 0, proc.stderr
  assert re.search(r"train_val\s+4\s+3", proc.stdout) and "Hernia" in proc.stdout
  assert "(patient-disjoint)" in proc.stdout and not out.exists()


def test_script_bad_input(src, tmp_path):
  _write_csv(src, _rows_with(4, labels="Effusion|Pneumonitis"))
  out = tmp_path / "out"
  proc = _script("--src", src, "--out", str(out), "--image_size", str(SIZE))
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr
  assert f"{os.path.join(src, CSV)}, row 6:" in errors[0] and "Pneumonitis" in errors[0]
  assert not out.exists()


# ---------------------------------------------------------------- the patient id of an image name


def _table(tmp_path, rows, train_val, test):
  """A labels-only source (no images): the table and the official lists."""
  _real()
  src = str(tmp_path / "table")
  os.makedirs(src)
  _write_csv(src, rows)
  _write_list(src, "train_val_list.txt", train_val)
  _write_list(src, "test_list.txt", test)
  return src


def _patients_by_name(names):
  return {int(n.split("_")[0]) for n in names}


def test_patient_id_disagreeing_with_image_name_cannot_leak(tmp_path):
  """Patient 1's image filed under Patient ID 2 would put patient 1 in train_val and test."""
  rows = [("00000001_000.png", "Effusion", "1", "50", "M", "PA"),
          ("00000002_000.png", "No Finding", "2", "60", "F", "PA"),
          ("00000001_005.png", "No Finding", "2", "50", "M", "PA")]   # row 4
  src = _table(tmp_path, rows, [rows[0][0]], [rows[1][0], rows[2][0]])
  stats = cx.check(src, labels_only=True, problems=Problems(skip_bad=True))
  splits = cx.read_source(src, Problems(skip_bad=True)).splits(0.0, 0)
  assert stats["patient_disjoint"]
  assert not _patients_by_name(splits["train_val"]) & _patients_by_name(splits["test"])
  assert stats["skipped"]["counts"] == {"patient_mismatch": 1}
  assert stats["splits"]["test"]["num_images"] == 1
  with pytest.raises(BadInputError, match=re.escape(
      f"{os.path.join(src, CSV)}, row 4: 00000001_005.png: Patient ID 2 is not patient 1")):
    cx.check(src, labels_only=True)


@pytest.mark.parametrize("name,pid", [("00001001_001.png", "1001a"), ("00001001_001.png", "-1001"),
                                      ("00001001_001.png", "1002"), ("1001-001.png", "1001"),
                                      ("00001001_001.jpg", "1001"), ("x00001001_001.png", "1001")])
def test_patient_id_checked_against_image_name(tmp_path, name, pid):
  rows = _rows_with(1, name=name, pid=pid)
  src = _table(tmp_path, rows, [r[0] for r in rows[:4]], TEST)
  with pytest.raises(BadInputError, match=rf"{re.escape(os.path.join(src, CSV))}, row 3: "
                                          rf"{re.escape(name)}: .*--skip_bad"):
    cx.check(src, labels_only=True)
  stats = cx.check(src, labels_only=True, problems=Problems(skip_bad=True))
  assert stats["skipped"]["counts"] == {"patient_mismatch": 1}
  assert stats["splits"]["train_val"]["num_images"] == 3   # dropped, not reported again


def test_patient_id_compared_as_a_number(tmp_path):
  src = _table(tmp_path, _rows_with(1, pid="00001001"), TRAIN_VAL, TEST)
  source = cx.read_source(src, Problems())
  assert source.rows[ROWS[1][0]].patient_id == "1001" and len(source.patients(TRAIN_VAL)) == 3


# ---------------------------------------------------------------- published split lists (CheXNet's)

LISTED = {"train": [ROWS[0][0], ROWS[1][0], ROWS[3][0]], "val": [ROWS[2][0]], "test": TEST}


def _columns(name):
  labels = dict((r[0], r[1]) for r in ROWS)[name].split("|")
  return " ".join("1" if c in labels else "0" for c in cx.CLASSES)


def _write_lists(folder, lists=None, columns=("train", "test")):
  """CheXNet's format: 'images/NAME 0 1 ...' (label columns in `columns` lists) or bare names."""
  paths = {}
  for split, names in (lists or LISTED).items():
    paths[split] = os.path.join(folder, f"{split}.txt")
    with open(paths[split], "w") as f:
      for name in names:
        f.write(f"images/{name} {_columns(name)}\n" if split in columns else f"{name}\n")
  return paths


@pytest.fixture
def lists(tmp_path):
  os.makedirs(tmp_path / "lists")
  return _write_lists(str(tmp_path / "lists"))


def test_build_from_split_lists(src, lists, tmp_path):
  out = tmp_path / "out"
  _build(src, out, split_lists=lists)
  meta = builder.load(str(out)).info.metadata
  for split, names in LISTED.items():
    assert [e["example_id"].decode() for e in _read(out, split)] == names
  policy = meta["split_policy"]
  assert all(os.path.basename(p) in policy for p in lists.values()) and "carved" in policy
  assert "val_fraction" not in meta and meta["skipped"]["counts"] == {}
  assert set(meta["source_checksums"]) == {CSV, "train.txt", "val.txt", "test.txt"}
  assert meta["patients"] == {"train": 2, "val": 1, "test": 2}


def test_check_split_lists(src, lists):
  os.remove(os.path.join(src, "train_val_list.txt"))   # the official lists are not needed
  stats = cx.check(src, labels_only=True, split_lists=lists)
  assert {s: tuple(v.values()) for s, v in stats["splits"].items()} == {
      "train": (3, 2), "val": (1, 1), "test": (2, 2)}
  assert stats["patient_overlap"] == {"train/val": 0, "train/test": 0, "val/test": 0}
  assert stats["patient_disjoint"] and stats["unlisted_images"] == 0
  assert stats["label_counts"]["total"]["Cardiomegaly"] == 2
  report = cx.format_report(stats)
  assert re.search(r"\ntrain\s+3\s+2\s+0\n", report) and "(patient-disjoint)" in report
  assert f"as listed, val not carved: train {lists['train']}, val {lists['val']}" in report
  assert re.search(r"positives\s+train\s+val\s+test\s+total\n", report)
  stats = cx.check(src, labels_only=True, split_lists={"train": lists["train"],
                                                       "test": lists["test"]})   # no val
  assert list(stats["splits"]) == ["train", "test"] and stats["unlisted_images"] == 1
  assert "rows in no split list: 1;" in cx.format_report(stats)


def test_split_lists_flag(src, lists):
  assert cx.parse_split_lists(f"train={lists['train']},test={lists['test']}") == {
      "train": lists["train"], "test": lists["test"]}
  for bad in ("train=a", "train=a,test=b,extra=c", "train=a,test=b,train=c", "train,test=b"):
    with pytest.raises(ValueError, match="--split_lists"):
      cx.parse_split_lists(bad)
  with pytest.raises(FileNotFoundError, match="nowhere.txt"):
    cx.check(src, labels_only=True, split_lists={**lists, "val": "nowhere.txt"})
  proc = _script("--src", src, "--check", "--labels_only", "--split_lists",
                 ",".join(f"{k}={v}" for k, v in lists.items()))
  assert proc.returncode == 0, proc.stderr
  assert re.search(r"\nval\s+1\s+1\s+1\n", proc.stdout) and "(patient-disjoint)" in proc.stdout


def _flip_first_label(folder):
  path = os.path.join(folder, "train.txt")
  with open(path) as f:
    lines = f.read().splitlines()
  lines[1] = lines[1][:-1] + ("0" if lines[1].endswith("1") else "1")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _moved(lists):
  return lambda d: _write_lists(d, {**LISTED, **lists})


SPLIT_LIST_BAD = {  # case: (mutation of the lists' folder, file, line, skipped counts, listed)
    "unknown_image": (_moved({"val": [ROWS[2][0], "00009999_000.png"]}), "val.txt", 2,
                      {"unknown_image_in_split": 1}, 6),
    "label_mismatch": (_flip_first_label, "train.txt", 2, {"label_mismatch": 1}, 5),
    "shared_patient": (_moved({"train": [ROWS[0][0], ROWS[3][0]], "val": [ROWS[2][0], ROWS[1][0]]}),
                       "train.txt", 1, {"patient_in_both_splits": 1}, 5),
    "image_in_two_lists": (_moved({"val": [ROWS[2][0], ROWS[3][0]]}), "train.txt", 3,
                           {"image_in_both_splits": 1}, 6),
    "duplicate": (_moved({"test": TEST + TEST[:1]}), "test.txt", 3, {"duplicate_in_split": 1}, 6),
    "column_count": (lambda d: open(os.path.join(d, "test.txt"), "a").write(
        f"{ROWS[2][0]} 0 1\n"), "test.txt", 3, {"malformed_split_line": 1}, 6),
    "column_value": (lambda d: open(os.path.join(d, "val.txt"), "a").write(
        f"{ROWS[3][0]} {'2 ' * 14}\n"), "val.txt", 2, {"malformed_split_line": 1}, 6),
}


@pytest.mark.parametrize("case", sorted(SPLIT_LIST_BAD))
def test_split_lists_bad_input(case, src, lists):
  mutate, filename, line, counts, listed = SPLIT_LIST_BAD[case]
  mutate(os.path.dirname(lists["train"]))
  path = os.path.join(os.path.dirname(lists["train"]), filename)
  with pytest.raises(BadInputError, match=rf"{re.escape(path)}, line {line}: .*--skip_bad"):
    cx.check(src, labels_only=True, split_lists=lists)
  stats = cx.check(src, labels_only=True, split_lists=lists, problems=Problems(skip_bad=True))
  assert stats["skipped"]["counts"] == counts and stats["patient_disjoint"]
  assert sum(v["num_images"] for v in stats["splits"].values()) == listed
