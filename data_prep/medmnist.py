"""Any 2D MedMNIST set from its official .npz (28, 64, 128 or 224 px) -> a TFDS dataset.

  python data_prep/medmnist.py --src retinamnist.npz --out data/retinamnist28
  python data_prep/medmnist.py --src retinamnist_224.npz --check

The set's name (a builder config), task and class names come from `medmnist.INFO`; the name
is read from the file name unless --name is given. --image_size defaults to the file's own
size. A file whose split sizes or md5 differ from medmnist.INFO is refused unless
--accept_mismatch is given, which records the difference in the dataset's metadata. Float
images in [0, 1] are scaled to uint8 (said in --check and recorded as `conversions`); other
non-uint8 images, fractional or out-of-range labels and labels unlike the set's task are an
error naming the file, key and row.
"""

import os
import sys

# This file is named like the `medmnist` package; keep its folder off the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from absl import flags  # noqa: E402

from medvlmoe_jax.data import builder, medmnist, prep  # noqa: E402

prep.define_flags("The official .npz file.", image_size=None)
flags.DEFINE_string("name", None, "MedMNIST set (default: from the file name).")
flags.DEFINE_bool("accept_mismatch", False, "Build a file whose split sizes or md5 differ "
                  "from medmnist.INFO, recording the difference.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  name = FLAGS.name or medmnist.name_and_size(FLAGS.src)[0]
  prep.main(
      check=lambda problems: medmnist.check(FLAGS.src, name, FLAGS.accept_mismatch),
      build=lambda: builder.build(
          medmnist.MedMNIST, FLAGS.out, src=FLAGS.src, config=name,
          image_size=FLAGS.image_size or medmnist.name_and_size(FLAGS.src)[1],
          skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers,
          accept_mismatch=FLAGS.accept_mismatch),
      validate=lambda: medmnist.info(name))


if __name__ == "__main__":
  prep.run(main)
