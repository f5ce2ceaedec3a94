"""NIH ChestX-ray14 as published -> the project's records (train / val / test + manifest.json).

  python data_prep/chestxray14.py --src RAW --out DIR [--image_size 224]
      [--val_fraction 0.1] [--seed 0] [--skip_bad] [--num_workers N]
  python data_prep/chestxray14.py --src RAW --check [--labels_only]   # writes nothing

RAW holds Data_Entry_2017(_v2020).csv[.gz], train_val_list.txt, test_list.txt and the
images under images/ or images_001/images/ ... images_012/images/. The flags are absl
flags (image_size, labels_only, skip_bad, val_fraction, num_workers); the dashed
spellings --image-size, --labels-only, --skip-bad, --val-fraction, --num-workers are
accepted too. The validation split is val_fraction of the train_val patients.
"""

import sys

from absl import app, flags

from medvlmoe_jax.data import chestxray14
from medvlmoe_jax.data.prep import BadInputError, Problems, format_manifest

_SRC = flags.DEFINE_string("src", None, "The dataset folder as NIH ships it.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder for records and manifest.json.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Stored square image size (pixels).")
_CHECK = flags.DEFINE_boolean("check", False, "Validate and print statistics; write nothing.")
_LABELS_ONLY = flags.DEFINE_boolean("labels_only", False, "With --check: skip the images.")
_SKIP_BAD = flags.DEFINE_boolean("skip_bad", False, "Count, log and skip bad entries.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Share of train_val patients for val.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the patient-wise val carving.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Image decoding threads.")

flags.register_validator("val_fraction", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
flags.register_validator("image_size", lambda v: v > 0, "must be positive")

_DASHED = ("image_size", "labels_only", "skip_bad", "val_fraction", "num_workers")


def _undash(argv: list[str]) -> list[str]:
  """--image-size=3 -> --image_size=3 for this script's flags (absl knows only '_')."""
  out = list(argv[:1])
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      return out + argv[i:]
    if arg.startswith("--"):
      name, sep, value = arg[2:].partition("=")
      fixed = name.replace("-", "_")
      if fixed in _DASHED or (fixed.startswith("no") and fixed[2:] in _DASHED):
        arg = f"--{fixed}{sep}{value}"
    out.append(arg)
  return out


def main(argv):
  del argv
  problems = Problems(skip_bad=_SKIP_BAD.value)
  try:
    if _CHECK.value:
      stats = chestxray14.check(_SRC.value, labels_only=_LABELS_ONLY.value, problems=problems,
                                val_fraction=_VAL_FRACTION.value, seed=_SEED.value,
                                num_workers=_NUM_WORKERS.value)
      print(chestxray14.format_report(stats))
      return
    if not _OUT.value:
      raise app.UsageError("--out is required unless --check is given")
    manifest = chestxray14.prepare(_SRC.value, _OUT.value, image_size=_IMAGE_SIZE.value,
                                   problems=problems, val_fraction=_VAL_FRACTION.value,
                                   seed=_SEED.value, num_workers=_NUM_WORKERS.value)
  except (BadInputError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(format_manifest(manifest, _OUT.value))


if __name__ == "__main__":
  app.run(main, argv=_undash(sys.argv))
