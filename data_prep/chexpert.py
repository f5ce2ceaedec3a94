r"""CheXpert v1.0(-small) -> records + manifest.json (see medvlmoe_jax/data/chexpert.py).

  python data_prep/chexpert.py --src RAW --out DIR [--image_size 224] \
      [--policy "Atelectasis=u_ones,Edema=u_ones,default=u_ignore"]
  python data_prep/chexpert.py --src RAW --check [--labels_only]

Flags:
  --src           a folder holding train.csv / valid.csv, or its parent holding
                  CheXpert-v1.0-small/ or CheXpert-v1.0/.
  --out           output folder (records and manifest.json); not needed with --check.
  --image_size    square side of the stored images (shortest edge resized, centre crop).
  --check         validate the source and print statistics; writes nothing.
  --labels_only   with --check: read the CSVs only, do not look up the images.
  --skip_bad      count, log and skip bad rows and images instead of stopping at the first.
  --policy        uncertainty (-1) policy: one of u_ones, u_zeros, u_ignore for every class,
                  or CLASS=POLICY pairs plus default=POLICY (class names case-insensitive,
                  '_' for ' '). Blank labels are always negative.
  --frontal_only  keep frontal views only (default; --nofrontal_only keeps laterals).
  --val_fraction  fraction of train.csv patients carved out as the val split.
  --seed          seed of that patient split.
  --num_workers   image decoding threads (default: the CPU count, at most 16).
The official valid.csv becomes the test split (CheXpert's test set is not public).
"""

import sys

from absl import app, flags

from medvlmoe_jax.data import chexpert
from medvlmoe_jax.data.prep import BadInputError, Problems, format_manifest

flags.DEFINE_string("src", None, "CheXpert folder (with valid.csv/train.csv) or its parent.")
flags.DEFINE_string("out", None, "Output folder for records and manifest.json.")
flags.DEFINE_integer("image_size", 224, "Side of the stored square images.")
flags.DEFINE_bool("check", False, "Validate and print statistics; write nothing.")
flags.DEFINE_bool("labels_only", False, "With --check: read the CSVs only.")
flags.DEFINE_bool("skip_bad", False, "Count and skip bad input instead of stopping.")
flags.DEFINE_string("policy", chexpert.DEFAULT_POLICY,
                    "Uncertainty policy, e.g. u_ones or 'Edema=u_ones,default=u_ignore'.")
flags.DEFINE_bool("frontal_only", True, "Keep frontal views only.")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of train patients for the val split.")
flags.DEFINE_integer("seed", 0, "Seed of the patient-wise val split.")
flags.DEFINE_integer("num_workers", None, "Image decoding threads.")
flags.mark_flag_as_required("src")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  problems = Problems(skip_bad=FLAGS.skip_bad)
  try:
    chexpert.parse_policy(FLAGS.policy)   # a typo fails before any reading
    if FLAGS.check:
      print(chexpert.format_check(chexpert.check(FLAGS.src, FLAGS.labels_only, problems)))
      return 0
    if not FLAGS.out:
      raise app.UsageError("--out is required unless --check is given")
    print(format_manifest(chexpert.prepare(
        FLAGS.src, FLAGS.out, FLAGS.image_size, problems, policy=FLAGS.policy,
        frontal_only=FLAGS.frontal_only, val_fraction=FLAGS.val_fraction, seed=FLAGS.seed,
        num_workers=FLAGS.num_workers), FLAGS.out))
  except (BadInputError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  # The error messages of `Problems` spell the flag --skip-bad; accept that spelling too.
  app.run(main, argv=["--skip_bad" if a == "--skip-bad" else a for a in sys.argv])
