"""ChestX-ray14 preparation: the real label table and split lists, and a small fixture in
the published layout (made here from the two real images and a few synthetic ones)."""

import csv
import gzip
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medvlmoe_jax.data import chestxray14 as cx
from medvlmoe_jax.data import records
from medvlmoe_jax.data.prep import BadInputError, Problems
from medvlmoe_jax.data.preprocess import load_image, resize_and_crop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
REAL = os.path.join(DATA, "chestxray14")
REAL_CSV = os.path.join(REAL, "Data_Entry_2017_v2020.csv.gz")
REAL_IMAGES = ("00000001_000.png", "00027426_000.png")
SIZE = 64


def _real():
  needed = [REAL_CSV, os.path.join(REAL, "train_val_list.txt"),
            os.path.join(REAL, "test_list.txt")] + [os.path.join(REAL, "images", n) for n in REAL_IMAGES]
  absent = [p for p in needed if not os.path.exists(p)]
  if absent:
    pytest.fail(f"the shared ChestX-ray14 files are missing ({absent[0]}); they live in "
                f"../shared/data next to the project root ({DATA})")
  return REAL


@pytest.fixture(scope="module")
def real_stats():
  return cx.check(_real(), labels_only=True)


def test_real_split_sizes_and_patients(real_stats):
  s = real_stats["splits"]
  assert s["train_val"]["num_images"] == 86_524
  assert s["test"]["num_images"] == 25_596
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


def test_real_label_counts(real_stats):
  # Counted straight from the table: 141 train_val + 86 test Hernia images.
  counts = real_stats["label_counts"]
  assert counts["total"]["Hernia"] == 227
  assert (counts["train_val"]["Hernia"], counts["test"]["Hernia"]) == (141, 86)
  assert counts["total"]["Infiltration"] == 19_894
  assert real_stats["no_finding"]["total"] == 60_361
  for c in cx.CLASSES:
    assert counts["train"][c] + counts["val"][c] == counts["train_val"][c]


def test_val_carving_is_deterministic(real_stats):
  source = cx.read_source(_real(), Problems())
  a = cx.carve_val(source.train_val, source.entries, 0.1, seed=0)
  assert a == cx.carve_val(source.train_val, source.entries, 0.1, seed=0)
  assert len(a[1]) == real_stats["splits"]["val"]["num_images"]
  b = cx.carve_val(source.train_val, source.entries, 0.1, seed=1)
  assert set(a[1]) != set(b[1])
  with pytest.raises(ValueError, match="val_fraction"):
    cx.carve_val(source.train_val, source.entries, 1.0)


def test_sentence_never_names_a_label():
  _real()
  forbidden = [c.lower().replace("_", " ") for c in cx.CLASSES] + ["finding"]
  pattern = re.compile("|".join(map(re.escape, forbidden)))
  with gzip.open(REAL_CSV, "rt", newline="") as f:
    reader = csv.DictReader(f)
    n = 0
    for row in reader:
      text = cx.sentence(row["Patient Age"], row["Patient Gender"], row["View Position"])
      low = text.lower().replace("_", " ")
      assert not pattern.search(low), (row["Image Index"], text)
      age = int(row["Patient Age"])
      if age >= 1:
        assert re.search(rf"\b{age}-year-old\b", text), text
      else:
        assert "under 1 year old" in text, text
      sex = {"M": "male", "F": "female"}[row["Patient Gender"]]
      assert re.search(rf"\b{sex}\b", text), text
      assert f"{row['View Position']} view" in text, text
      n += 1
  assert n == 112_120


def test_sentence_odd_values():
  assert cx.sentence(58, "M", "PA") == "A 58-year-old male patient, PA view."
  assert cx.sentence("81", "F", "AP") == "An 81-year-old female patient, AP view."
  assert cx.sentence("058Y", "F", "AP") == "A 58-year-old female patient, AP view."
  assert cx.sentence(414, "M", "PA") == "A male patient of unknown age, PA view."
  assert cx.sentence("", "", "") == "A patient of unknown age."
  assert cx.sentence(0, "F", "pa") == "A female patient under 1 year old, PA view."
  # Free text in a column never reaches the sentence.
  assert cx.sentence("n/a", "Hernia", "Mass") == "A patient of unknown age."
  assert cx.parse_age("006M") == 0 and cx.parse_age(121) is None and cx.parse_age(120) == 120


# ---------------------------------------------------------------- fixture in the published layout

# (name, labels, patient, age, sex, view, image source, folder); rows 2..7 of the CSV.
ROWS = [
    ("00001001_000.png", "Cardiomegaly|Emphysema", "1001", "58", "M", "PA", REAL_IMAGES[0], "images_001/images"),
    ("00001001_001.png", "Cardiomegaly", "1001", "59", "M", "PA", "grey", "images_001/images"),
    ("00001002_000.png", "No Finding", "1002", "8", "F", "AP", REAL_IMAGES[1], "images_002/images"),
    ("00001003_000.png", "Hernia|Pleural_Thickening", "1003", "414", "F", "AP", "rgba", "images_002/images"),
    ("00001004_000.png", "Effusion", "1004", "45", "M", "PA", "grey16", "images_002/images"),
    ("00001005_000.png", "No Finding", "1005", "70", "F", "PA", "grey", "images"),
]
TRAIN_VAL = [r[0] for r in ROWS[:4]]
TEST = [r[0] for r in ROWS[4:]]


def _header():
  with gzip.open(REAL_CSV, "rt", newline="") as f:
    return f.readline().rstrip("\r\n")


def _write_csv(src, rows):
  with open(os.path.join(src, "Data_Entry_2017_v2020.csv"), "w", newline="") as f:
    f.write(_header() + "\n")
    for name, labels, pid, age, sex, view, *_ in rows:
      f.write(f"{name},{labels},0,{pid},{age},{sex},{view},2500,2048,0.168,0.168\n")


def _write_list(src, filename, names):
  with open(os.path.join(src, filename), "w") as f:
    f.write("\n".join(names))  # as NIH ships them: no trailing newline


def _make_fixture(src):
  _real()
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


@pytest.fixture
def fixture_src(tmp_path):
  return _make_fixture(str(tmp_path / "src"))


def _read_split(out, manifest, split):
  from array_record.python.array_record_module import ArrayRecordReader
  examples = []
  for name in manifest["splits"][split]["files"]:
    reader = ArrayRecordReader(os.path.join(out, name))
    examples += [records.decode_example(r) for r in reader.read_all()]
    reader.close()
  return examples


def test_prepare_fixture(fixture_src, tmp_path):
  out = str(tmp_path / "out")
  manifest = cx.prepare(fixture_src, out, image_size=SIZE, val_fraction=0.34, seed=0,
                        num_workers=2)
  assert manifest == records.read_manifest(out)
  assert manifest["name"] == "chestxray14" and manifest["task"] == "multilabel"
  assert manifest["classes"] == list(cx.CLASSES) and manifest["image_size"] == SIZE
  assert "never from Finding Labels" in manifest["text_policy"]
  assert manifest["skipped"]["counts"] == {}
  assert set(manifest["source_checksums"]) == {
      "Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt"}
  assert manifest["source_checksums"]["test_list.txt"] == records.file_checksum(
      os.path.join(fixture_src, "test_list.txt"))

  rows = {r[0]: r for r in ROWS}
  seen = {}
  for split in cx.SPLITS:
    examples = _read_split(out, manifest, split)
    info = manifest["splits"][split]
    assert info["num_examples"] == len(examples)
    assert info["num_patients"] == len({e["patient_id"] for e in examples})
    for e in examples:
      seen[e["example_id"]] = split
      name, labels, pid, age, sex, view, image, _ = rows[e["example_id"]]
      want = np.zeros(14, np.float32)
      if labels != "No Finding":
        want[[cx.CLASSES.index(n) for n in labels.split("|")]] = 1
      np.testing.assert_array_equal(e["labels"], want)
      assert e["labels"].dtype == np.float32 and e["label_mask"].all()
      assert e["text"] == cx.sentence(age, sex, view) and e["patient_id"] == pid
      decoded = records.decode_image(e["image"])
      assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.uint8
      if image in REAL_IMAGES:
        np.testing.assert_array_equal(
            decoded, resize_and_crop(load_image(os.path.join(REAL, "images", image)), SIZE))
  assert sorted(seen) == sorted(rows)
  assert {n for n, s in seen.items() if s == "test"} == set(TEST)
  assert rows["00001003_000.png"][3] == "414"
  # val: one whole patient out of the three train_val ones.
  assert manifest["splits"]["val"]["num_patients"] == 1
  assert manifest["splits"]["train"]["num_patients"] == 2
  val_patients = {rows[n][2] for n, s in seen.items() if s == "val"}
  train_patients = {rows[n][2] for n, s in seen.items() if s == "train"}
  assert not val_patients & train_patients


def test_check_fixture_images(fixture_src):
  stats = cx.check(fixture_src, labels_only=False, val_fraction=0.34)
  assert stats["images"] == {"listed": 6, "found": 6, "missing": 0, "unreadable": 0,
                             "readable": 6}
  assert stats["unknown_age"] == 1 and stats["label_counts"]["total"]["Cardiomegaly"] == 2
  os.remove(os.path.join(fixture_src, "images", "00001005_000.png"))
  with pytest.raises(BadInputError, match=r"Data_Entry_2017_v2020\.csv, row 7: image 00001005_000\.png not found"):
    cx.check(fixture_src, labels_only=False)
  stats = cx.check(fixture_src, labels_only=False, problems=Problems(skip_bad=True))
  assert stats["images"]["missing"] == 1 and stats["skipped"]["counts"] == {"missing_image": 1}
  assert cx.check(fixture_src, labels_only=True)["images"] is None


def _missing_image(src):
  os.remove(os.path.join(src, "images_002", "images", "00001002_000.png"))


def _truncated_png(src):
  path = os.path.join(src, "images_001", "images", "00001001_000.png")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])


def _wrong_columns(src):
  rows = [list(r) for r in ROWS]
  rows[1][5] = "M,extra"  # row 3 gets 12 columns
  _write_csv(src, rows)


def _unknown_label(src):
  rows = [list(r) for r in ROWS]
  rows[4][1] = "Effusion|Pneumonitis"  # row 6
  _write_csv(src, rows)


def _unknown_in_split(src):
  _write_list(src, "test_list.txt", TEST + ["00009999_000.png"])  # line 3


BAD = {  # kind: (mutation, file named in the error, where, examples left)
    "missing_image": (_missing_image, "Data_Entry_2017_v2020.csv", "row 4", 5),
    "unreadable_image": (_truncated_png, "Data_Entry_2017_v2020.csv", "row 2", 5),
    "malformed_row": (_wrong_columns, "Data_Entry_2017_v2020.csv", "row 3", 5),
    "unknown_label": (_unknown_label, "Data_Entry_2017_v2020.csv", "row 6", 5),
    "unknown_image_in_split": (_unknown_in_split, "test_list.txt", "line 3", 6),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input(kind, fixture_src, tmp_path):
  mutate, filename, where, left = BAD[kind]
  mutate(fixture_src)
  with pytest.raises(BadInputError) as err:
    cx.prepare(fixture_src, str(tmp_path / "strict"), image_size=SIZE)
  assert f"{os.path.join(fixture_src, filename)}, {where}:" in str(err.value)
  assert "--skip-bad" in str(err.value)
  out = str(tmp_path / "skip")
  manifest = cx.prepare(fixture_src, out, image_size=SIZE, problems=Problems(skip_bad=True),
                        num_workers=2)
  assert manifest["skipped"]["counts"] == {kind: 1}
  assert sum(s["num_examples"] for s in manifest["splits"].values()) == left
  assert sum(len(_read_split(out, manifest, s)) for s in cx.SPLITS) == left
  assert records.read_manifest(out)["skipped"]["counts"] == {kind: 1}


def test_cli_check_writes_nothing(fixture_src, tmp_path):
  out = tmp_path / "never"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "data_prep", "chestxray14.py"), "--src", fixture_src,
       "--check", "--labels-only", "--val-fraction=0.34", "--out", str(out)],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "train_val" in proc.stdout and "Hernia" in proc.stdout
  assert "(patient-disjoint)" in proc.stdout and not out.exists()
