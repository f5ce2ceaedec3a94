"""The project cites its own design document: every `docs/design.md §N` in the code names a
section that exists, and nothing shipped (package, launch, data_prep, configs, docs) points
at a file outside the repository (the README and the design document may say where the
tests' real data lives)."""

import os
import re

from conftest import ROOT

SHIPPED = ("medvlmoe_jax", "launch", "data_prep", "configs", "docs")


def _files():
  for top in SHIPPED:
    for folder, _, names in os.walk(os.path.join(ROOT, top)):
      for name in names:
        if name.endswith((".py", ".md", ".sbatch")):
          yield os.path.join(folder, name)


def test_design_doc_citations_and_no_outside_paths():
  with open(os.path.join(ROOT, "docs", "design.md")) as f:
    sections = set(re.findall(r"^## (\d+)\. ", f.read(), re.M))
  assert len(sections) >= 8
  cited, outside = [], []
  for path in list(_files()) + [os.path.join(ROOT, "README.md")]:
    with open(path) as f:
      text = f.read()
    rel = os.path.relpath(path, ROOT)
    for match in re.finditer(r"design\.md((?:,? ?§\d+)+)", text):
      cited += [(rel, n) for n in re.findall(r"§(\d+)", match.group(1))]
    if "DESIGN.md" in text:
      outside.append(f"{rel}: cites DESIGN.md")
    if rel.endswith(".py") and "../shared" in text:   # the docs say where test data lives
      outside.append(f"{rel}: refers to ../shared")
  assert cited, "nothing cites docs/design.md"
  assert not [c for c in cited if c[1] not in sections], [c for c in cited if c[1] not in sections]
  assert not outside, outside
