"""Padding never routes: evaluating N examples in a padded batch gives the predictions,
dropped counts and routing heatmap of the same N examples unpadded (with a capacity set, so
that padding rows could otherwise take expert slots)."""

import numpy as np
import pytest

from medvlmoe_jax.data import pipeline
from medvlmoe_jax.eval import evaluate, figures
from medvlmoe_jax.train import trainer as trainer_lib

# Float32 results compared to ~1e-5: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity

N = 24


@pytest.mark.parametrize("granularity", ["sample", "token"])
def test_padded_batch_routes_like_unpadded(demo_config, granularity, tmp_path):
  demo_config.model.moe.capacity_factor = 0.5      # tight: assignments are dropped
  demo_config.model.moe.granularity = granularity
  demo_config.data.eval_batch_size = 32
  exp = trainer_lib.create_experiment(demo_config)
  _, eval_fn = exp.jitted()
  full = exp.data.splits["test"]
  split = pipeline.ArraySplit({k: v[:N] for k, v in full.arrays.items()})
  padded = evaluate.predict(eval_fn, exp.state.params, split, 32, exp.mesh)   # 8 padding rows
  exact = evaluate.predict(eval_fn, exp.state.params, split, N, exp.mesh)     # no padding
  assert exact["dropped_tokens"] > 0
  assert int(padded["dropped_tokens"]) == int(exact["dropped_tokens"])
  np.testing.assert_allclose(padded["probs"], exact["probs"], rtol=1e-5, atol=1e-6)
  if granularity == "sample":
    np.testing.assert_array_equal(padded["expert_index"], exact["expert_index"])
    names = [f"c{k}" for k in range(split.labels.shape[1])]
    heat = [figures.routing_heatmap(split.labels, out["expert_index"], names,
                                    demo_config.model.moe.num_experts,
                                    str(tmp_path / f"{i}.png"), str(tmp_path / f"{i}.csv"))
            for i, out in enumerate((padded, exact))]
    np.testing.assert_array_equal(heat[0], heat[1])
