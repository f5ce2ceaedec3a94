"""Strict renaming of a flat source state dict onto a module's parameter tree.

Every source tensor must be used exactly once (or match an explicit ignore pattern), every
target parameter must be filled, and every shape must agree; otherwise the conversion stops
with one message that lists all problems.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
from flax import nnx

from medvlmoe_jax.models.pretrained import ConversionError
from medvlmoe_jax.tree import flat_paths

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda x: x,
    "linear": lambda x: x.T,                        # torch (out, in) -> flax (in, out)
    "conv": lambda x: x.transpose(2, 3, 1, 0),      # torch OIHW -> flax HWIO
}


def param_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
  """{'layers/0/self_attn/q_proj/kernel': shape, ...} of a module's nnx.Param leaves."""
  return {p: tuple(x.shape) for p, x in flat_paths(nnx.state(module, nnx.Param)).items()}


def rename(source: dict[str, np.ndarray], rules, targets: dict[str, tuple],
           ignore: tuple[str, ...] = (), what: str = "checkpoint") -> dict[str, np.ndarray]:
  """rules: [(source regex, target template with \\1 groups, transform name)]."""
  out: dict[str, np.ndarray] = {}
  unexpected, shape_errors, duplicates = [], [], []
  for name in sorted(source):
    if any(re.fullmatch(p, name) for p in ignore):
      continue
    for pattern, template, transform in rules:
      m = re.fullmatch(pattern, name)
      if m:
        break
    else:
      unexpected.append(name)
      continue
    target = m.expand(template)
    value = TRANSFORMS[transform](np.asarray(source[name], np.float32))
    if target in out:
      duplicates.append(f"{name} -> {target}")
    elif target not in targets:
      unexpected.append(f"{name} (-> {target}, which the model does not have)")
    elif tuple(value.shape) != targets[target]:
      shape_errors.append(f"{name}: shape {tuple(np.shape(source[name]))} -> {tuple(value.shape)}, "
                          f"expected {targets[target]} for {target}")
    else:
      out[target] = value
  missing = sorted(set(targets) - set(out) - {d.split(" -> ")[1] for d in duplicates})
  problems = []
  for title, items in (("missing tensors (no source for these parameters)", missing),
                       ("unexpected tensors", unexpected), ("mis-shaped tensors", shape_errors),
                       ("tensors mapped twice", duplicates)):
    if items:
      problems.append(f"{title}:\n    " + "\n    ".join(items))
  if problems:
    raise ConversionError(f"{what}: " + "\n  ".join(problems))
  return out
