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

from medvlmoe_jax.data import chexpert, prep

prep.define_cxr_flags(chexpert.DEFAULT_POLICY)
flags.DEFINE_float("val_fraction", 0.1, "Fraction of train patients for the val split.")
flags.DEFINE_integer("seed", 0, "Seed of the patient-wise val split.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  return prep.run_script(
      validate=lambda: chexpert.parse_policy(FLAGS.policy),   # a typo fails before any reading
      check=lambda problems: chexpert.format_check(
          chexpert.check(FLAGS.src, FLAGS.labels_only, problems)),
      prepare=lambda problems: chexpert.prepare(
          FLAGS.src, FLAGS.out, FLAGS.image_size, problems, policy=FLAGS.policy,
          frontal_only=FLAGS.frontal_only, val_fraction=FLAGS.val_fraction, seed=FLAGS.seed,
          num_workers=FLAGS.num_workers))


if __name__ == "__main__":
  app.run(main, argv=prep.script_argv(sys.argv))
