r"""MIMIC-CXR-JPG 2.0.0 + reports -> a TFDS dataset (see medvlmoe_jax/data/mimic_cxr.py).

  python data_prep/mimic_cxr.py --src physionet.org/files/mimic-cxr-jpg/2.0.0 \
      --reports mimic-cxr-reports --out data/mimic_cxr [--policy u_ones]
  python data_prep/mimic_cxr.py --src ... --check [--labels_only] [--policy ...]

Splits are the official ones (train, validate -> val, test). The text stream gets the
report's INDICATION / HISTORY / COMPARISON sections only.
"""

from absl import flags

from medvlmoe_jax.data import builder, chexpert, mimic_cxr, prep

prep.define_flags("The MIMIC-CXR-JPG 2.0.0 folder: mimic-cxr-2.0.0-*.csv(.gz) and files/.")
flags.DEFINE_string("reports", None, "Folder holding the reports' files/pXX/pSUBJECT/"
                    "sSTUDY.txt (default: SRC/mimic-cxr-reports if it exists, else SRC).")
flags.DEFINE_string("policy", chexpert.DEFAULT_POLICY, "Uncertainty (-1) policy, as for "
                    "CheXpert: u_ones, u_zeros, u_ignore, or CLASS=POLICY pairs plus "
                    "default=POLICY. Blank labels are negative.")
flags.DEFINE_bool("frontal_only", True, "Keep PA / AP views only (--nofrontal_only keeps "
                  "every view).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  prep.main(
      check=lambda problems: chexpert.format_check(
          mimic_cxr.check(FLAGS.src, FLAGS.labels_only, problems, reports=FLAGS.reports,
                          policy=FLAGS.policy, frontal_only=FLAGS.frontal_only)),
      build=lambda: builder.build(
          mimic_cxr.MimicCxr, FLAGS.out, src=FLAGS.src, image_size=FLAGS.image_size,
          skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers, policy=FLAGS.policy,
          frontal_only=FLAGS.frontal_only, reports=FLAGS.reports),
      validate=lambda: chexpert.parse_policy(FLAGS.policy))   # a typo fails before reading


if __name__ == "__main__":
  prep.run(main)
