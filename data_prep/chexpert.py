r"""CheXpert v1.0(-small) -> a TFDS dataset (see medvlmoe_jax/data/chexpert.py).

  python data_prep/chexpert.py --src data/raw --out data/chexpert \
      [--policy "Atelectasis=u_ones,Edema=u_ones,default=u_ignore"]
  python data_prep/chexpert.py --src data/raw --check [--labels_only] [--policy ...]

--src is the folder holding train.csv / valid.csv, or its parent holding
CheXpert-v1.0-small/ or CheXpert-v1.0/. The official valid.csv becomes the test split (the
test set is not public); --val_fraction of the train.csv patients become val.
"""

from absl import flags

from medvlmoe_jax.data import builder, chexpert, prep

prep.define_flags("Folder holding train.csv / valid.csv, or its parent.")
flags.DEFINE_string("policy", chexpert.DEFAULT_POLICY, "Uncertainty (-1) policy: u_ones, "
                    "u_zeros or u_ignore for every class, or CLASS=POLICY pairs plus "
                    "default=POLICY. Blank labels are negative.")
flags.DEFINE_bool("frontal_only", True, "Keep frontal views only (--nofrontal_only keeps "
                  "laterals).")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of train.csv patients carved out as val.")
flags.DEFINE_integer("seed", 0, "Seed of the patient-wise val split.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  prep.main(
      check=lambda problems: chexpert.format_check(
          chexpert.check(FLAGS.src, FLAGS.labels_only, problems, policy=FLAGS.policy,
                         frontal_only=FLAGS.frontal_only)),
      build=lambda: builder.build(
          chexpert.CheXpert, FLAGS.out, src=FLAGS.src, image_size=FLAGS.image_size,
          skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers, policy=FLAGS.policy,
          frontal_only=FLAGS.frontal_only, val_fraction=FLAGS.val_fraction, seed=FLAGS.seed),
      validate=lambda: chexpert.parse_policy(FLAGS.policy))   # a typo fails before reading


if __name__ == "__main__":
  prep.run(main)
