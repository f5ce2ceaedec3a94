"""Imports run one way: config -> data -> models/moe -> train -> eval -> the run, with the
neutral helpers at the bottom (docs/design.md, "Layout"). Every import in the package, at
module level or inside a function, must point to the same layer or below."""

import ast
import os
import tokenize

from conftest import ROOT

# Lower numbers sit lower. A module may import its own package and anything below it.
LAYERS = {
    "cli": 0,                         # BadInputError and the scripts' wrapper
    "config": 1,
    "tree": 2, "nn": 2, "platform": 2,
    "sharding": 3, "distributed": 3,
    "data": 4,
    "moe": 5,
    "models": 6,
    "train": 8,
    "eval": 9,
    "experiment": 10, "convert": 10,  # convert: a tool beside the run, not under it
    "ablations": 11, "benchmark": 11,
}


def _unit(module: str) -> str:
  """'medvlmoe_jax.train.step' -> 'train'."""
  return module.split(".")[1]


def _imports(path: str):
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medvlmoe_jax"):
      if node.module == "medvlmoe_jax":        # from medvlmoe_jax import sharding, config
        for alias in node.names:
          yield node.lineno, alias.name
      else:
        yield node.lineno, _unit(node.module)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("medvlmoe_jax."):
          yield node.lineno, _unit(alias.name)


def test_no_import_runs_back_up():
  package = os.path.join(ROOT, "medvlmoe_jax")
  upward, seen = [], set()
  for folder, _, files in os.walk(package):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, package)
      unit = rel.split(os.sep)[0].removesuffix(".py")
      if unit == "__init__":
        continue
      assert unit in LAYERS, f"{rel}: module {unit!r} has no layer in this test"
      seen.add(unit)
      for line, target in _imports(path):
        assert target in LAYERS, f"{rel}:{line} imports unknown unit {target!r}"
        if target != unit and LAYERS[target] >= LAYERS[unit]:
          upward.append(f"{rel}:{line} ({unit}, layer {LAYERS[unit]}) imports {target} "
                        f"(layer {LAYERS[target]})")
  assert seen == set(LAYERS)
  assert not upward, "imports running up or sideways:\n  " + "\n  ".join(upward)


def test_code_indents_by_two_spaces():
  """One indentation across the code (eval/metrics.py once used four)."""
  wrong = []
  for top in ("medvlmoe_jax", "launch", "data_prep", "configs"):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for name in (n for n in files if n.endswith(".py")):
        path = os.path.join(folder, name)
        with open(path) as f:
          depth = [0]
          for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.INDENT:
              depth.append(len(tok.string))
              if depth[-1] - depth[-2] != 2:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{tok.start[0]}")
                break
            elif tok.type == tokenize.DEDENT:
              depth.pop()
  assert not wrong, "indented by other than two spaces: " + ", ".join(wrong)
