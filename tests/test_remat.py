"""Rematerialised encoder layers (`model.remat`): the same parameters, loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medvlmoe_jax.models.medvlmoe import build_model
from medvlmoe_jax.config import REMAT_POLICIES
from medvlmoe_jax.tree import tree_paths
from test_models import inputs, tiny_model_config

# Float32 results compared to ~1e-5: true float32 matmuls (conftest.py).
pytestmark = pytest.mark.float32_parity


def loss_and_grads(remat: str):
  graphdef, params = nnx.split(build_model(tiny_model_config(remat=remat)), nnx.Param)
  image, ids, mask = inputs()

  def loss(params):
    logits, aux = nnx.merge(graphdef, params)(image, ids, mask)
    return jnp.sum(jnp.sin(logits)) + aux["load_balance_loss"]

  return params, jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def reference():
  return loss_and_grads("none")


@pytest.mark.parametrize("policy", ["full", "dots_with_no_batch_dims_saveable", "dots_saveable"])
def test_remat_keeps_parameters_loss_and_gradients(policy, reference):
  """Only what the backward pass keeps changes: parameter paths (checkpoints, optimizer and
  sharding rules match them), the loss and every gradient are those without remat."""
  ref_params, (ref_loss, ref_grads) = reference
  params, (loss, grads) = loss_and_grads(policy)
  assert jax.tree.leaves(tree_paths(params)) == jax.tree.leaves(tree_paths(ref_params))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
  for path, g, r in zip(jax.tree.leaves(tree_paths(grads)), jax.tree.leaves(grads),
                        jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6, err_msg=path)


def test_remat_recomputes_in_the_backward_pass():
  """The policy really reaches the layers: one `remat` equation per encoder layer (2 vision
  + 2 text) in the gradient's jaxpr, none without remat."""
  image, ids, mask = inputs()
  for policy, count in (("none", 0), ("full", 4)):
    graphdef, params = nnx.split(build_model(tiny_model_config(remat=policy)), nnx.Param)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(image, ids, mask)[0])
    assert str(jax.make_jaxpr(jax.grad(loss))(params)).count("remat") == count, policy


def test_unknown_remat_policy_is_rejected():
  with pytest.raises(ValueError, match="model.remat='sometimes'"):
    build_model(tiny_model_config(remat="sometimes"))
  assert {"none", "full", "dots_with_no_batch_dims_saveable"} <= set(REMAT_POLICIES)
