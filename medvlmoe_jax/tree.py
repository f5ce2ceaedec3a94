"""Parameter paths: the one naming of tree leaves ('vision/layers/0/self_attn/q_proj/kernel')
that optimizer rules, sharding rules and weight conversion all match against."""

from __future__ import annotations

import jax


def path_str(path) -> str:
  """'vision/layers/0/self_attn/q_proj/kernel' from a jax key path (Variable `.value` dropped)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      continue
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def tree_paths(tree):
  """A tree of the same structure whose leaves are their path strings."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def flat_paths(tree) -> dict:
  """{path: leaf} of any pytree (nnx.State included)."""
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

