"""Any 2D MedMNIST set, from its official .npz (28, 64, 128 or 224 px), into records.

  python data_prep/medmnist.py --src retinamnist.npz --out data/retinamnist
  python data_prep/medmnist.py --src retinamnist_224.npz --check

The dataset name, task and class names come from `medmnist.INFO` (the name is read from the
file name, or given with --name); the text is one modality sentence per dataset (no label).
Flags: --src, --out, --image_size (default: the file's own size), --name, --check (validate
and print statistics, write nothing), --labels_only and --skip_bad (accepted for a uniform
interface: an .npz has no separate image files to check or skip).
"""

import json
import os
import sys

# This file is named like the `medmnist` package; keep its folder off the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from absl import app, flags  # noqa: E402

from medvlmoe_jax.data import medmnist  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "The official .npz file.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory for records + manifest.json.")
_SIZE = flags.DEFINE_integer("image_size", None, "Resize to this size (default: native).")
_NAME = flags.DEFINE_string("name", None, "MedMNIST name (default: from the file name).")
_CHECK = flags.DEFINE_bool("check", False, "Validate and print statistics only.")
flags.DEFINE_bool("labels_only", False, "No effect for .npz sources.")
flags.DEFINE_bool("skip_bad", False, "No effect for .npz sources.")


def main(argv):
  del argv
  stats = medmnist.check(_SRC.value, _NAME.value)
  print(f"{stats['name']}: task {stats['task']}, {len(stats['classes'])} classes "
        f"{stats['classes']}, native size {stats['native_size']} px, md5 {stats['md5']} "
        f"({'matches' if stats['md5_matches_medmnist'] else 'DOES NOT match'} medmnist.INFO)")
  for split, s in stats["splits"].items():
    print(f"  {split:<5} {s['num_examples']:>7,} examples, per class {s['per_class']}")
  if _CHECK.value:
    return
  if not _OUT.value:
    raise app.UsageError("--out is required unless --check")
  manifest = medmnist.prepare(_SRC.value, _OUT.value, _SIZE.value, _NAME.value)
  print(json.dumps({k: manifest[k] for k in ("name", "task", "image_size", "splits")}, indent=2))


if __name__ == "__main__":
  app.run(main)
