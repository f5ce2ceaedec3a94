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

from medvlmoe_jax.data import chexpert, mimic_cxr
from medvlmoe_jax.data.prep import BadInputError, Problems, format_manifest

flags.DEFINE_string("src", None, "MIMIC-CXR-JPG 2.0.0 folder.")
flags.DEFINE_string("reports", None, "Folder with the reports' files/ tree.")
flags.DEFINE_string("out", None, "Output folder for records and manifest.json.")
flags.DEFINE_integer("image_size", 224, "Side of the stored square images.")
flags.DEFINE_bool("check", False, "Validate and print statistics; write nothing.")
flags.DEFINE_bool("labels_only", False, "With --check: read the CSVs only.")
flags.DEFINE_bool("skip_bad", False, "Count and skip bad input instead of stopping.")
flags.DEFINE_string("policy", chexpert.DEFAULT_POLICY,
                    "Uncertainty policy, e.g. u_ones or 'Edema=u_ones,default=u_ignore'.")
flags.DEFINE_bool("frontal_only", True, "Keep PA/AP views only.")
flags.DEFINE_integer("num_workers", None, "Image decoding threads.")
flags.mark_flag_as_required("src")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  problems = Problems(skip_bad=FLAGS.skip_bad)
  try:
    chexpert.parse_policy(FLAGS.policy)   # a typo fails before any reading
    if FLAGS.check:
      stats = mimic_cxr.check(FLAGS.src, FLAGS.labels_only, problems, reports=FLAGS.reports)
      print(chexpert.format_check(stats))
      return 0
    if not FLAGS.out:
      raise app.UsageError("--out is required unless --check is given")
    print(format_manifest(mimic_cxr.prepare(
        FLAGS.src, FLAGS.out, FLAGS.image_size, problems, policy=FLAGS.policy,
        frontal_only=FLAGS.frontal_only, reports=FLAGS.reports, num_workers=FLAGS.num_workers), FLAGS.out))
  except (BadInputError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  # The error messages of `Problems` spell the flag --skip-bad; accept that spelling too.
  app.run(main, argv=["--skip_bad" if a == "--skip-bad" else a for a in sys.argv])
