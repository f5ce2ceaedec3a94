r"""MIMIC-CXR-JPG 2.0.0 + reports -> records + manifest.json (see medvlmoe_jax/data/mimic_cxr.py).

  python data_prep/mimic_cxr.py --src physionet.org/files/mimic-cxr-jpg/2.0.0 \
      --reports mimic-cxr-reports --out DIR [--image_size 224] [--policy u_ones]
  python data_prep/mimic_cxr.py --src ... --check [--labels_only]

Flags:
  --src           the MIMIC-CXR-JPG folder: mimic-cxr-2.0.0-{chexpert,split,metadata}.csv(.gz)
                  and files/pXX/pSUBJECT/sSTUDY/DICOM.jpg.
  --reports       the folder holding the reports' files/pXX/pSUBJECT/sSTUDY.txt (default:
                  SRC/mimic-cxr-reports if it exists, else SRC).
  --out           output folder (records and manifest.json); not needed with --check.
  --image_size    square side of the stored images (shortest edge resized, centre crop).
  --check         validate the source and print statistics; writes nothing.
  --labels_only   with --check: read the CSVs only, no images or reports.
  --skip_bad      count, log and skip bad rows, images and reports instead of stopping.
  --policy        uncertainty (-1) policy, as for CheXpert: u_ones, u_zeros, u_ignore, or
                  CLASS=POLICY pairs plus default=POLICY. Blank labels are negative.
  --frontal_only  keep PA/AP views only (default; --nofrontal_only keeps every view).
  --num_workers   image decoding threads (default: the CPU count, at most 16).
Splits are the official ones (train, validate -> val, test). The text stream gets the
report's INDICATION / HISTORY / COMPARISON sections only.
"""

import sys

from absl import app, flags

from medvlmoe_jax.data import chexpert, mimic_cxr, prep

prep.define_cxr_flags(chexpert.DEFAULT_POLICY)
flags.DEFINE_string("reports", None, "Folder with the reports' files/ tree.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  return prep.run_script(
      validate=lambda: chexpert.parse_policy(FLAGS.policy),   # a typo fails before any reading
      check=lambda problems: chexpert.format_check(
          mimic_cxr.check(FLAGS.src, FLAGS.labels_only, problems, reports=FLAGS.reports)),
      prepare=lambda problems: mimic_cxr.prepare(
          FLAGS.src, FLAGS.out, FLAGS.image_size, problems, policy=FLAGS.policy,
          frontal_only=FLAGS.frontal_only, reports=FLAGS.reports, num_workers=FLAGS.num_workers))


if __name__ == "__main__":
  app.run(main, argv=prep.script_argv(sys.argv))
