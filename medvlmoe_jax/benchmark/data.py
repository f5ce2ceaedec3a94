"""Input-pipeline throughput from 512x512 PNG chest X-rays.

Two stages, as the data flows: preparation (a TFDS build as `data_prep` runs it: decode the
512 px PNG, resize and crop to 224, encode, write array_record), and the training pipeline
(read the example through `as_data_source`, decode, augment, tokenize with BioGPT's tokenizer,
batch, normalise) with 0 and 2 Grain worker processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from medvlmoe_jax.data import builder, pipeline
from medvlmoe_jax.data.tokenizers import BioGptTokenizer


class _Pngs(builder.Builder):
  """A one-split dataset of X-ray PNGs, built as every dataset is."""

  name = "bench_pngs"
  VERSION = tfds.core.Version("1.0.0")
  CLASSES = tuple(f"c{k}" for k in range(14))

  def __init__(self, *, pngs: list[str], **kwargs):
    self.pngs = pngs
    super().__init__(**kwargs)

  def read(self, src):
    return {"train": [builder.Example(key=str(i), where=p, image=p,
                                      text="A 58-year-old male patient, PA view.",
                                      labels=np.zeros(14), label_mask=np.ones(14, bool),
                                      patient_id="p") for i, p in enumerate(self.pngs)]}


def _source_pngs(shared_data: str, count: int, workdir: str) -> list[str]:
  """`count` real 512x512 X-ray PNGs (the two shipped ones, copied under new names)."""
  real = sorted(os.path.join(shared_data, "chestxray14", "images", f)
                for f in os.listdir(os.path.join(shared_data, "chestxray14", "images")))
  paths = []
  for i in range(count):
    path = os.path.join(workdir, f"img{i:05d}.png")
    shutil.copy(real[i % len(real)], path)
    paths.append(path)
  return paths


def run(shared_data: str, num_examples: int = 512, batch_size: int = 32,
        workers: tuple[int, ...] = (0, 2), batches: int = 64) -> dict:
  from medvlmoe_jax.data.tokenizers import write_biogpt_tokenizer
  workdir = tempfile.mkdtemp(prefix="medvlmoe_data_bench_")
  try:
    pngs = _source_pngs(shared_data, num_examples, workdir)
    out = os.path.join(workdir, "built")
    prep_s = {}
    for threads in (1, None):                   # one thread, then data_prep's default
      t0 = time.perf_counter()
      built = builder.build(_Pngs, out, pngs=pngs, image_size=224, num_workers=threads)
      prep_s[threads] = time.perf_counter() - t0
    tok_dir = os.path.join(workdir, "tokenizer")
    release = os.path.join(shared_data, "biogpt_tokenizer")
    write_biogpt_tokenizer(os.path.join(release, "dict.txt"), os.path.join(release, "bpecodes"), tok_dir)
    split = pipeline.TfdsSplit(builder.load(out), "train", BioGptTokenizer(tok_dir), 64)
    augment = ml_collections.ConfigDict(dict(enabled=True, translate=0.05, brightness=0.1,
                                             contrast=0.1, hflip=False))
    result = {"num_examples": num_examples, "batch_size": batch_size,
              "prepare_threads": built.num_workers or min(16, os.cpu_count() or 1),
              "prepare_records_per_s": num_examples / prep_s[None],
              "prepare_1_thread_records_per_s": num_examples / prep_s[1], "pipeline": {}}
    for w in workers:
      it = pipeline.train_iterator(split, batch_size, seed=0, worker_count=w, augment_cfg=augment)
      for _ in range(1 + 2 * w):                # start-up: every worker has delivered
        next(it)
      t0 = time.perf_counter()
      for _ in range(batches):
        batch = next(it)
      seconds = time.perf_counter() - t0
      assert batch["image"].shape == (batch_size, 224, 224, 3)
      result["pipeline"][f"{w}_workers_records_per_s"] = batches * batch_size / seconds
    return result
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def table(result: dict) -> str:
  lines = [f"input pipeline, 512x512 PNG X-rays, batch {result['batch_size']}:",
           f"  data_prep (TFDS build, {result['prepare_threads']} threads: decode 512 px PNG, "
           f"resize+crop to 224, encode, write): {result['prepare_records_per_s']:.0f} records/s "
           f"({result['prepare_1_thread_records_per_s']:.0f} with 1 thread)"]
  for k, v in result["pipeline"].items():
    lines.append(f"  training pipeline, {k.split('_')[0]} workers (read, decode, augment, "
                 f"tokenize, batch): {v:.0f} records/s")
  return "\n".join(lines)
