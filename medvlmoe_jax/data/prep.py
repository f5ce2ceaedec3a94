"""Shared pieces of the data_prep scripts: bad-input reporting and the summary they print.

A problem in the source (missing or unreadable image, malformed CSV row, unknown label,
unknown image in a split list, empty report) stops preparation with an error naming the
file and row, unless --skip-bad is given: then it is counted, logged and skipped.
"""

from __future__ import annotations

import collections
import logging

log = logging.getLogger(__name__)


class BadInputError(ValueError):
  pass


class Problems:
  """Raises on the first problem, or (skip_bad) counts them by kind."""

  def __init__(self, skip_bad: bool = False):
    self.skip_bad = skip_bad
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def report(self, kind: str, where: str, message: str) -> None:
    text = f"{where}: {message}"
    if not self.skip_bad:
      raise BadInputError(text + " (use --skip-bad to skip such entries)")
    self.counts[kind] += 1
    if len(self.examples[kind]) < 5:
      self.examples[kind].append(text)
    log.warning("skipped (%s) %s", kind, text)

  def summary(self) -> dict:
    return {"counts": dict(self.counts), "examples": dict(self.examples)}


def format_manifest(manifest: dict, out: str) -> str:
  """What a data_prep script wrote: examples, patients and shards per split, and skips."""
  lines = [f"{manifest['name']}: wrote {out}",
           f"  {'split':<8}{'examples':>10}{'patients':>10}{'shards':>8}"]
  for name, info in manifest["splits"].items():
    lines.append(f"  {name:<8}{info['num_examples']:>10,}{info['num_patients']:>10,}"
                 f"{len(info['files']):>8}")
  skipped = manifest["skipped"]["counts"]
  counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
  lines.append(f"  skipped: {counts or 'none'}")
  return "\n".join(lines)


def define_cxr_flags(policy_default: str) -> None:
  """The flags the CheXpert-labelled scripts (chexpert.py, mimic_cxr.py) share."""
  from absl import flags
  flags.DEFINE_string("src", None, "The dataset folder as released.", required=True)
  flags.DEFINE_string("out", None, "Output folder for records and manifest.json.")
  flags.DEFINE_integer("image_size", 224, "Side of the stored square images.")
  flags.DEFINE_bool("check", False, "Validate and print statistics; write nothing.")
  flags.DEFINE_bool("labels_only", False, "With --check: read the CSVs only.")
  flags.DEFINE_bool("skip_bad", False, "Count and skip bad input instead of stopping.")
  flags.DEFINE_string("policy", policy_default,
                      "Uncertainty policy, e.g. u_ones or 'Edema=u_ones,default=u_ignore'.")
  flags.DEFINE_bool("frontal_only", True, "Keep frontal (PA/AP) views only.")
  flags.DEFINE_integer("num_workers", None, "Image decoding threads.")


def run_script(check, prepare, validate=None) -> int:
  """A data_prep script's main: `validate()` the flags, then with --check print
  `check(problems)`, else print what `prepare(problems)` wrote (its manifest); bad input
  ends in one 'error:' line and status 1."""
  import sys

  from absl import app, flags
  f = flags.FLAGS
  problems = Problems(skip_bad=f.skip_bad)
  try:
    if validate is not None:
      validate()
    if f.check:
      print(check(problems))
      return 0
    if not f.out:
      raise app.UsageError("--out is required unless --check is given")
    print(format_manifest(prepare(problems), f.out))
  except (BadInputError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def script_argv(argv: list[str]) -> list[str]:
  """The error messages of `Problems` spell the flag --skip-bad; accept that spelling too."""
  return ["--skip_bad" if a == "--skip-bad" else a for a in argv]
