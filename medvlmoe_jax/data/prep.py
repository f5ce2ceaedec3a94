"""The data_prep scripts' shared flags and main: every script spells its flags the same way.

  python data_prep/<name>.py --src RAW --out DIR [--image_size 224] [--skip_bad]
  python data_prep/<name>.py --src RAW --check [--labels_only]      # writes nothing

Bad input ends in one 'error: ...' line naming the file and row, and exit status 1.
"""

from __future__ import annotations

from typing import Callable

from absl import app, flags

from medvlmoe_jax import cli
from medvlmoe_jax.data import builder as builder_lib
from medvlmoe_jax.data.sources import Problems

# A data_prep script only reads and checks its input, so every ValueError it raises (a label
# or policy it cannot parse, besides BadInputError) is about that input.
BAD_INPUT = (ValueError,)


def define_flags(src_help: str, image_size: int | None = 224) -> None:
  flags.DEFINE_string("src", None, src_help, required=True)
  flags.DEFINE_string("out", None, "Folder the dataset is built in (TFDS, array_record); "
                      "tfds.builder_from_directory(out) opens it.")
  flags.DEFINE_integer("image_size", image_size, "Side of the stored square images (shortest "
                       "edge resized, centre crop).")
  flags.DEFINE_bool("check", False, "Validate the source and print statistics; write nothing.")
  flags.DEFINE_bool("labels_only", False, "With --check: read the label files only, not the "
                    "images.")
  flags.DEFINE_bool("skip_bad", False, "Count, log and skip bad input (recorded in the "
                    "dataset's metadata) instead of stopping at the first.")
  flags.DEFINE_integer("num_workers", None, "Image decoding threads (default: CPUs, at most 16).")


def summary(b: builder_lib.Builder, out: str) -> str:
  """What a build wrote: examples, patients and shards per split, and the skips."""
  meta = b.info.metadata
  lines = [f"{meta['name']}: built {out}", f"  {'split':<8}{'examples':>10}{'patients':>10}"
                                            f"{'shards':>8}"]
  for name, split in b.info.splits.items():
    lines.append(f"  {name:<8}{split.num_examples:>10,}{meta['patients'].get(name, 0):>10,}"
                 f"{split.num_shards:>8}")
  counts = meta["skipped"]["counts"]
  lines.append("  skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                or "none"))
  return "\n".join(lines)


def main(check: Callable[[Problems], str], build: Callable[[], builder_lib.Builder],
         validate: Callable[[], object] | None = None) -> None:
  """`validate()` the flags, then print `check(problems)` (--check) or build the dataset with
  `build()` and print its summary."""
  f = flags.FLAGS
  if validate is not None:
    validate()
  if f.check:
    print(check(Problems(skip_bad=f.skip_bad)))
    return
  if not f.out:
    raise app.UsageError("--out is required unless --check is given")
  print(summary(build(), f.out))


def run(main_fn) -> None:
  """cli.run for the data_prep scripts: dashed flags accepted (--skip-bad for --skip_bad), and
  bad input, wherever main_fn meets it, as one line."""
  cli.run(main_fn, also=BAD_INPUT)
