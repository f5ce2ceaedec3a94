"""NIH ChestX-ray14 as NIH ships it -> a TFDS dataset (train / val / test, array_record).

  python data_prep/chestxray14.py --src RAW --out DIR [--image_size 224] [--val_fraction 0.1]
      [--seed 0] [--split_lists train=PATH,val=PATH,test=PATH] [--skip_bad] [--num_workers N]
  python data_prep/chestxray14.py --src RAW --check [--labels_only] [--split_lists ...]

RAW holds Data_Entry_2017(_v2020).csv[.gz], train_val_list.txt, test_list.txt and the images
under images/ or images_001/images/ ... images_012/images/ (see
`ChestXray14.MANUAL_DOWNLOAD_INSTRUCTIONS`). Val is --val_fraction of the train_val patients,
unless --split_lists gives published train / [val /] test lists (e.g. CheXNet's), taken as given.
"""

from absl import flags

from medvlmoe_jax.data import builder, chestxray14, prep

prep.define_flags("The ChestX-ray14 folder as NIH ships it.")
flags.DEFINE_float("val_fraction", 0.1, "Share of the train_val patients carved out as val.")
flags.DEFINE_integer("seed", 0, "Seed of the patient-wise val carving.")
flags.DEFINE_string("split_lists", None, "train=PATH,val=PATH,test=PATH (val optional): "
                    "published split lists instead of train_val_list.txt / test_list.txt; "
                    "a line is an image name or path, optionally followed by the 14 labels "
                    "(0/1), which must match the table. Val is not carved.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  prep.main(
      check=lambda problems: chestxray14.format_report(chestxray14.check(
          FLAGS.src, labels_only=FLAGS.labels_only, problems=problems,
          val_fraction=FLAGS.val_fraction, seed=FLAGS.seed, num_workers=FLAGS.num_workers,
          split_lists=FLAGS.split_lists)),
      build=lambda: builder.build(
          chestxray14.ChestXray14, FLAGS.out, src=FLAGS.src, image_size=FLAGS.image_size,
          skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers,
          val_fraction=FLAGS.val_fraction, seed=FLAGS.seed, split_lists=FLAGS.split_lists))


if __name__ == "__main__":
  prep.run(main)
