"""Evaluate a training workdir on a split.

  python launch/eval.py --workdir runs/demo [--split test] [--checkpoint best|latest|STEP]

Prints per-class AUC and mean AUC with a 95% bootstrap CI; writes metrics.json and
predictions.npz under WORKDIR/eval/<split>_step<N>/.
"""

import logging

from absl import app, flags

from medvlmoe_jax.eval.run import evaluate_workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  rep = evaluate_workdir(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
  print(f"{rep['split']} split, checkpoint step {rep['checkpoint_step']}")
  print(rep["table"])
  print(f"wrote {rep['out_dir']}/metrics.json")


if __name__ == "__main__":
  app.run(main)
