"""Batches mixing several datasets (data/mixture.py): every row is its dataset's example with
its labels padded, shares follow the weights, each dataset is permuted afresh every epoch,
resume is exact, process rows partition the batch, mismatches are refused by name, and
augmentation is seeded."""

import json

import numpy as np
import pytest

from medvlmoe_jax import config as config_lib
from medvlmoe_jax.cli import BadInputError
from medvlmoe_jax.data import pipeline
from medvlmoe_jax.data.mixture import mixed_train_iterator

NAMES = ("chest", "retina", "derma")
# Not multiples of the batch, so epochs end mid-batch. Not tinier either: Grain's
# index_shuffle costs ~50 / n ms per index for n examples (a few ms each for n < 10).
SIZES = (97, 131, 61)
WIDTHS = (5, 2, 3)
KEYS = {"image", "input_ids", "attention_mask", "labels", "label_mask", "dataset"}


def _split(d: int, n: int, c: int, size: int = 16, length: int = 6) -> pipeline.ArraySplit:
  """Channel 0 of every pixel is the dataset, channel 1 the index, channel 2 a ramp (for the
  augmentation to move); text and labels are distinct per example too."""
  rng = np.random.default_rng(d)
  image = np.zeros((n, size, size, 3), np.uint8)
  image[..., 0] = d
  image[..., 1] = np.arange(n)[:, None, None]
  image[..., 2] = (np.arange(size) * 12)[None, None, :]
  ids = 1000 * (d + 1) + 10 * np.arange(n)[:, None] + np.arange(length)
  mask = np.arange(length)[None] < 2 + np.arange(n)[:, None] % (length - 1)
  return pipeline.ArraySplit(dict(
      image=image, input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
      labels=(rng.random((n, c)) < 0.5).astype(np.float32),
      label_mask=rng.random((n, c)) < 0.8))


def _splits(**changed) -> list[pipeline.ArraySplit]:
  """The three datasets; changed={d: kwargs} alters one."""
  return [_split(d, n, c, **changed.get(f"d{d}", {}))
          for d, (n, c) in enumerate(zip(SIZES, WIDTHS))]


def _augment(enabled: bool):
  cfg = config_lib.defaults().data.augment
  cfg.enabled = enabled
  return cfg


@pytest.fixture
def mixed():
  """mixed_train_iterator, closing every iterator it made at the end of the test: each one's
  threads would otherwise go on prefetching Grain's default 500 batches into the next tests."""
  made = []

  def make(*args, **kwargs):
    made.append(mixed_train_iterator(*args, **kwargs))
    return made[-1]

  yield make
  for it in made:
    it.close()


def _take(it, n: int) -> list[dict]:
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a: list[dict], b: list[dict]):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_every_row_is_its_datasets_example_with_labels_padded(mixed):
  splits = _splits()
  it = mixed(splits, (0.5, 0.3, 0.2), 8, seed=0, names=NAMES)
  seen = set()
  for batch in _take(it, 10):
    assert set(batch) == KEYS
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["input_ids"].shape == (8, 6) and batch["input_ids"].dtype == np.int32
    assert batch["labels"].shape == (8, max(WIDTHS)) and batch["labels"].dtype == np.float32
    assert batch["label_mask"].dtype == bool and batch["dataset"].dtype == np.int32
    for r in range(8):
      d, i = int(batch["dataset"][r]), int(batch["image"][r, 0, 0, 1])
      seen.add(d)
      src, c = splits[d].arrays, WIDTHS[d]
      np.testing.assert_array_equal(batch["image"][r], src["image"][i])
      np.testing.assert_array_equal(batch["input_ids"][r], src["input_ids"][i])
      np.testing.assert_array_equal(batch["attention_mask"][r], src["attention_mask"][i])
      np.testing.assert_array_equal(batch["labels"][r, :c], src["labels"][i])
      np.testing.assert_array_equal(batch["label_mask"][r, :c], src["label_mask"][i])
      assert not batch["labels"][r, c:].any() and not batch["label_mask"][r, c:].any()
  assert seen == {0, 1, 2}


def test_shares_follow_the_weights_and_a_zero_weight_gives_no_rows(mixed):
  # Grain's mix is a deterministic interleave, not sampling: its split into the first dataset
  # and the rest puts each prefix within 1 row of the first's share, and each further level
  # adds less than a row. These weights scale to the exact integers 250:150:100 and every
  # prefix is within 1 row of k * w (computed to 20000 rows), so a batch of 8 is within 2 and
  # 1600 rows are within 2 of the weights, where sampling would miss by ~sqrt(1600 / 4) = 20.
  weights = np.array([5.0, 3.0, 2.0])          # not normalised: the iterator does that
  batches = _take(mixed(_splits(), weights, 8, seed=1), 200)
  counts = np.bincount(np.concatenate([b["dataset"] for b in batches]), minlength=3)
  assert np.all(np.abs(counts - 1600 * weights / weights.sum()) <= 2), counts
  per_batch = np.stack([np.bincount(b["dataset"], minlength=3) for b in batches])
  assert np.all(np.abs(per_batch - 8 * weights / weights.sum()) <= 2), per_batch

  # weight 0: left out of the batches, not out of the label width (the head stays as it is)
  batches = _take(mixed(_splits(), (3, 0, 1), 8, seed=1), 50)
  rows = np.concatenate([b["dataset"] for b in batches])
  assert 1 not in rows and abs(np.mean(rows == 0) - 0.75) <= 2 / 400
  assert all(b["labels"].shape == (8, max(WIDTHS)) for b in batches)


def _order(batches: list[dict], d: int) -> np.ndarray:
  """Dataset d's example indices in the order they came."""
  rows = [(b["dataset"] == d, b["image"][:, 0, 0, 1]) for b in batches]
  return np.concatenate([index[mine] for mine, index in rows]).astype(int)


def test_each_dataset_is_permuted_afresh_every_epoch(mixed):
  batches = _take(mixed(_splits(), (1, 1, 1), 16, seed=2), 60)
  for d, n in enumerate(SIZES):
    order = _order(batches, d)
    epochs = [tuple(order[e * n:(e + 1) * n]) for e in range(len(order) // n)]
    assert len(epochs) >= 2
    for epoch in epochs:                        # every example once per epoch
      assert sorted(epoch) == list(range(n)), (d, epoch)
    assert len(set(epochs)) == len(epochs) and epochs[0] != tuple(range(n))  # fresh, shuffled
  other = _take(mixed(_splits(), (1, 1, 1), 16, seed=3), 60)
  assert not np.array_equal(_order(other, 1), _order(batches, 1))


def test_resume_continues_with_exactly_the_same_batches(mixed):
  def make():
    return mixed(_splits(), (0.5, 0.3, 0.2), 8, seed=4, augment_cfg=_augment(True))
  it = make()
  _take(it, 5)
  saved = json.dumps(it.get_state())            # goes into every checkpoint: small JSON
  assert len(saved) < 200, saved
  after = _take(it, 4)
  resumed = make()
  resumed.set_state(json.loads(saved))
  _assert_batches_equal(_take(resumed, 4), after)


def test_process_rows_partition_the_global_batch(mixed):
  full = _take(mixed(_splits(), (0.5, 0.3, 0.2), 8, seed=5), 3)
  halves = [_take(mixed(_splits(), (0.5, 0.3, 0.2), 8, seed=5, rows=slice(4 * h, 4 * h + 4)), 3)
            for h in range(2)]
  joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
  _assert_batches_equal(joined, full)


def test_mismatches_and_bad_weights_are_refused_by_name():
  w = (1, 1, 1)
  with pytest.raises(BadInputError, match=r"image size: 'chest' \(dataset 0\) has "
                                          r"\(16, 16, 3\), 'derma' \(dataset 2\) has \(12"):
    mixed_train_iterator(_splits(d2={"size": 12}), w, 8, seed=0, names=NAMES)
  with pytest.raises(BadInputError, match=r"text length: 'chest' .* 'retina' \(dataset 1\)"):
    mixed_train_iterator(_splits(d1={"length": 7}), w, 8, seed=0, names=NAMES)
  with pytest.raises(BadInputError, match=r"image size: dataset 0 .* dataset 1"):
    mixed_train_iterator(_splits(d1={"size": 8}), w, 8, seed=0)
  with pytest.raises(BadInputError, match=r">= 0: 'retina' \(dataset 1\)"):
    mixed_train_iterator(_splits(), (1, -1, 1), 8, seed=0, names=NAMES)
  with pytest.raises(BadInputError, match="every mixture weight is 0"):
    mixed_train_iterator(_splits(), (0, 0, 0), 8, seed=0)
  with pytest.raises(BadInputError, match="2 mixture weights for 3 datasets"):
    mixed_train_iterator(_splits(), (1, 1), 8, seed=0)
  empty = _splits()
  empty[2] = _split(2, 0, 3)
  with pytest.raises(BadInputError, match=r"'derma' \(dataset 2\) has no training examples"):
    mixed_train_iterator(empty, w, 8, seed=0, names=NAMES)


def test_augmentation_is_seeded_and_changes_only_images(mixed):
  def take(enabled, seed=6):
    return _take(mixed(_splits(), (0.5, 0.3, 0.2), 8, seed=seed,
                       augment_cfg=_augment(enabled)), 4)
  on, off = take(True), take(False)
  _assert_batches_equal(take(True), on)
  for a, b in zip(on, off):
    assert not np.array_equal(a["image"], b["image"])
    for k in KEYS - {"image"}:
      np.testing.assert_array_equal(a[k], b[k])

