"""The ablation variants are ConfigDict overrides: each sets exactly its keys, the source
config is untouched, and a misspelt key is an error rather than a new, ignored field."""

import pytest

from medvlmoe_jax import ablations
from medvlmoe_jax import config as config_lib


def _flat(c):
  return {k: v for k, v in _items(c.to_dict())}


def _items(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _items(v, f"{prefix}{k}.")
    else:
      yield prefix + k, v


@pytest.mark.parametrize("name", list(ablations.VARIANTS))
def test_variant_sets_exactly_its_keys(demo_config, name):
  before = _flat(demo_config)
  variant = _flat(ablations.variant_config(demo_config, ablations.VARIANTS[name]))
  assert _flat(demo_config) == before
  changed = {k for k in before if variant[k] != before[k]}
  assert set(variant) == set(before)
  assert changed == {k for k, v in ablations.VARIANTS[name].items() if before[k] != v}
  config_lib.validate(ablations.variant_config(demo_config, ablations.VARIANTS[name]))


def test_misspelt_override_is_an_error(demo_config):
  with pytest.raises(KeyError):
    ablations.variant_config(demo_config, {"model.moe.enable": False})
