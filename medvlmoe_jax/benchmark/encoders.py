"""Our converted encoders against Hugging Face's PyTorch models holding the same weights.

The HF models are built at full size with random weights (no download), saved, and run
through our conversion (`convert_vision` / `convert_text`), so both sides compute the same
function; the benchmark checks that they agree before timing them. Both run float32 on the
CPU with one thread per core. Achieved FLOP/s is the analytic forward FLOP count (matmuls
and attention, 2 FLOPs per multiply-add) over the median time, as a fraction of the best
large float32 matmul (XLA's or PyTorch's, 2048 or 4096 square) timed in the same rounds:
the machine's practical peak.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medvlmoe_jax import platform
from medvlmoe_jax.benchmark.timing import time_interleaved
from medvlmoe_jax.convert.encoders import convert_text, convert_vision
from medvlmoe_jax.models.pretrained import assign
from medvlmoe_jax.models.text import BioGpt
from medvlmoe_jax.models.vision import CLIPVisionTransformer

VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
               num_attention_heads=16, patch_size=14, image_size=224)
BIOGPT = dict()  # transformers' BioGptConfig defaults are microsoft/biogpt's.


def vit_flops(cfg, batch: int) -> float:
  """Forward FLOPs of the ViT: patch projection, QKV/out projections, attention, MLP."""
  tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
  d, m = cfg.width, cfg.mlp_dim
  patch = 2 * (tokens - 1) * cfg.channels * cfg.patch_size ** 2 * d
  layer = 2 * tokens * (4 * d * d + 2 * d * m) + 2 * 2 * tokens * tokens * d
  return float(batch * (patch + cfg.layers * layer))


def biogpt_flops(cfg, batch: int, seq: int) -> float:
  """Forward FLOPs of BioGPT's decoder stack (embedding lookups cost no matmul)."""
  d, m = cfg.width, cfg.ffn_dim
  layer = 2 * seq * (4 * d * d + 2 * d * m) + 2 * 2 * seq * seq * d
  return float(batch * cfg.layers * layer)


def _hf_pair(kind: str, hf_overrides: dict, workdir: str):
  """(HF torch model, our jitted equivalent, our config) with the same random weights."""
  import torch
  import transformers as tf
  torch.manual_seed(0)
  src = os.path.join(workdir, kind)
  if kind == "vision":
    hf = tf.CLIPVisionModel(tf.CLIPVisionConfig(**hf_overrides)).eval()
    hf.save_pretrained(src)
    cfg, params = convert_vision(src)
    ours = CLIPVisionTransformer(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))
  else:
    hf = tf.BioGptModel(tf.BioGptConfig(**hf_overrides)).eval()
    hf.save_pretrained(src)
    cfg, params = convert_text(src)
    ours = BioGpt(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))
  assign(ours, params, what=src)
  del params
  return hf, ours, cfg


def _jitted(module, *args):
  graphdef, state = nnx.split(module)
  f = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
  args = [jnp.asarray(a) for a in args]
  return lambda: f(state, *args)


def _torch_call(model, **inputs):
  import torch

  def call():
    with torch.inference_mode():
      return model(**inputs)
  return call


def _matmul_fns(sizes: tuple[int, ...]) -> dict:
  """n x n float32 matmuls in XLA and in PyTorch, for each n."""
  import torch
  rng = np.random.default_rng(0)
  mm = jax.jit(jnp.matmul)
  fns = {}
  for n in sizes:
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    fns[f"matmul/xla/{n}"] = lambda ja=ja, jb=jb: mm(ja, jb)
    fns[f"matmul/torch/{n}"] = lambda ta=ta, tb=tb: torch.matmul(ta, tb)
  return fns


def run(batches: tuple[int, ...] = (1, 8), seq: int = 64,
        matmul_n: tuple[int, ...] = (2048, 4096),
        rounds: int = 5, vision: dict | None = None, text: dict | None = None) -> dict:
  """Times both encoders at each batch size (one interleaved set per model, matmuls
  included in each), checks parity, and returns times, ratios and peak fractions."""
  import torch
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  results = {"config": dict(batches=list(batches), text_seq=seq, matmul_n=list(matmul_n),
                            rounds=rounds, threads=threads, torch=torch.__version__,
                            jax=jax.__version__, backend=platform.current().platform),
             "models": []}
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory(prefix="medvlmoe_enc_bench_") as workdir:
    for kind, overrides in (("vision", VIT_L14 if vision is None else vision),
                            ("text", BIOGPT if text is None else text)):
      hf, ours, cfg = _hf_pair(kind, overrides, workdir)
      fns, flops, max_diff = _matmul_fns(matmul_n), {}, 0.0
      for b in batches:
        if kind == "vision":
          x = rng.standard_normal((b, cfg.image_size, cfg.image_size, cfg.channels), np.float32)
          ours_fn = _jitted(ours, x)
          torch_fn = _torch_call(hf, pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
          flops[b] = vit_flops(cfg, b)
        else:
          ids = rng.integers(4, cfg.vocab_size, (b, seq))
          mask = np.ones((b, seq), np.int64)
          ours_fn = _jitted(ours, ids.astype(np.int32), mask.astype(np.int32))
          torch_fn = _torch_call(hf, input_ids=torch.from_numpy(ids),
                                 attention_mask=torch.from_numpy(mask))
          flops[b] = biogpt_flops(cfg, b, seq)
        diff = np.abs(np.asarray(ours_fn()) - torch_fn().last_hidden_state.numpy()).max()
        max_diff = max(max_diff, float(diff))
        fns[f"ours/{b}"], fns[f"torch/{b}"] = ours_fn, torch_fn
      times = time_interleaved(fns, rounds=rounds)
      matmul = {key[len("matmul/"):]: 2 * int(key.rsplit("/", 1)[1]) ** 3 / t["median_s"] / 1e9
                for key, t in times.items() if key.startswith("matmul/")}
      peak = 1e9 * max(matmul.values())
      name = "ViT" if kind == "vision" else "BioGPT"
      entry = {"model": name, "params": int(sum(p.numel() for p in hf.parameters())),
               "max_abs_diff": max_diff, "peak_gflops": peak / 1e9, "matmul_gflops": matmul,
               "batches": []}
      for b in batches:
        t_ours, t_torch = times[f"ours/{b}"]["median_s"], times[f"torch/{b}"]["median_s"]
        entry["batches"].append({
            "batch": b, "ours_ms": 1e3 * t_ours, "torch_ms": 1e3 * t_torch,
            "ours_over_torch": t_ours / t_torch, "gflop": flops[b] / 1e9,
            "ours_peak_fraction": flops[b] / t_ours / peak,
            "torch_peak_fraction": flops[b] / t_torch / peak})
      results["models"].append(entry)
      del hf, ours, fns
  return results


def table(results: dict) -> str:
  c = results["config"]
  sizes = "/".join(str(n) for n in c["matmul_n"])
  lines = [f"Encoders, float32 forward, ours (JAX {c['jax']}) vs HF PyTorch {c['torch']}, "
           f"{c['threads']} threads, text length {c['text_seq']}; peak = the best float32 "
           f"matmul (n = {sizes}, XLA or PyTorch)",
           f"{'model':<7} {'batch':>5} {'GFLOP':>7} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} "
           f"{'ours %peak':>10} {'torch %peak':>11} {'max|diff|':>9}"]
  for m in results["models"]:
    for b in m["batches"]:
      lines.append(f"{m['model']:<7} {b['batch']:>5} {b['gflop']:>7.1f} {b['ours_ms']:>9.1f} "
                   f"{b['torch_ms']:>9.1f} {b['ours_over_torch']:>6.2f} "
                   f"{100 * b['ours_peak_fraction']:>9.1f}% {100 * b['torch_peak_fraction']:>10.1f}% "
                   f"{m['max_abs_diff']:>9.1e}")
    mm = ", ".join(f"{k} {v:.1f}" for k, v in m["matmul_gflops"].items())
    lines.append(f"{'':<7} matmul peak {m['peak_gflops']:.1f} GFLOP/s ({mm})")
  return "\n".join(lines)
