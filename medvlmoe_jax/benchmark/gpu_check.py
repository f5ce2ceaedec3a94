"""Parts of `launch/gpu_check.sh` that need their own code: cuDNN's fused attention against
XLA's at every attention site of the full model, and the device's peak memory after a step.

  python -m medvlmoe_jax.benchmark.gpu_check attention --json OUT.json

Sites at full size (ViT-L/14 self-attention 257 x 257, BioGPT 64 x 64 causal + padding,
the fusion's 257 x 64 with the text's key padding and 64 x 257), batch 32, bf16: the max
absolute difference of the outputs and of the gradients (q, k, v) between
`models.layers.fused_attention` (cuDNN) and `jax.nn.dot_product_attention`'s XLA path with
the full boolean mask, and both against a float32 reference. Needs a GPU.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from medvlmoe_jax import platform
from medvlmoe_jax.models import layers

# (Lq, Lk, heads, causal, key padding)
SITES = {"vision_self": (257, 257, 16, False, False), "text_causal": (64, 64, 16, True, True),
         "fusion_vision_from_text": (257, 64, 8, False, True),
         "fusion_text_from_vision": (64, 257, 8, False, False)}


def attention_parity(batch: int = 32, head_dim: int = 64, seed: int = 0) -> list[dict]:
  target = platform.current()
  if target.platform != "gpu":
    raise RuntimeError(f"the attention check needs a GPU, not {target.platform}")
  rng = np.random.default_rng(seed)
  rows = []
  for site, (lq, lk, heads, causal, padded) in SITES.items():
    q32 = jnp.asarray(rng.normal(size=(batch, lq, heads, head_dim)) / 8, jnp.float32)
    k32, v32 = (jnp.asarray(rng.normal(size=(batch, lk, heads, head_dim)), jnp.float32)
                for _ in range(2))
    key_mask = None
    if padded:
      lengths = rng.integers(1, lk + 1, batch)
      key_mask = jnp.asarray(np.arange(lk)[None] < lengths[:, None])
    mask = layers.full_mask(lq, lk, key_mask=key_mask, causal=causal)

    def run(impl, q, k, v):
      if impl == "cudnn":
        f = lambda q, k, v: layers.fused_attention(q, k, v, key_mask=key_mask, causal=causal)
      else:
        f = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0,
                                                         implementation="xla")
      loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2)
      out = jax.jit(f)(q, k, v)
      grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
      return [np.asarray(x, np.float32) for x in (out, *grads)]

    bf16 = [x.astype(jnp.bfloat16) for x in (q32, k32, v32)]
    with jax.default_matmul_precision("float32"):
      reference = run("xla", q32, k32, v32)
    cudnn, xla = run("cudnn", *bf16), run("xla", *bf16)
    diff = lambda a, b: [float(np.max(np.abs(x - y))) for x, y in zip(a, b)]
    names = ("out", "dq", "dk", "dv")
    rows.append({"site": site, "batch": batch, "shape": [lq, lk, heads, head_dim],
                 "cudnn_vs_xla": dict(zip(names, diff(cudnn, xla))),
                 "cudnn_vs_float32": dict(zip(names, diff(cudnn, reference))),
                 "xla_vs_float32": dict(zip(names, diff(xla, reference)))})
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("part", choices=["attention"])
  p.add_argument("--json", required=True)
  args = p.parse_args(argv)
  result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "attention": attention_parity()}
  for row in result["attention"]:
    print(json.dumps(row), flush=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
