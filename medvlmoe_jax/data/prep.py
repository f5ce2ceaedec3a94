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
  lines.append("  skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"))
  return "\n".join(lines)
