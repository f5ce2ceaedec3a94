"""Evaluate a training workdir on a split.

  python launch/eval.py --workdir runs/demo [--split test] [--checkpoint best|latest|STEP]
  python launch/eval.py --workdir runs/s0 --workdir runs/s1 --workdir runs/s2 --out seeds.json

Prints per-class AUC and mean AUC with a 95% bootstrap CI; writes metrics.json and
predictions.npz under WORKDIR/eval/<split>_step<N>/.
"""

import json
import logging

from absl import flags

from medvlmoe_jax import cli
from medvlmoe_jax.eval.run import aggregate, evaluate_workdir, format_aggregate

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "Training workdir(s); several are "
                                     "aggregated as mean ± std (seeds).", required=True)
_OUT = flags.DEFINE_string("out", None, "With several workdirs: write the aggregate here.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  reports = []
  for workdir in _WORKDIR.value:
    rep = evaluate_workdir(workdir, _SPLIT.value, _CHECKPOINT.value)
    print(f"{workdir}: {rep['split']} split, checkpoint step {rep['checkpoint_step']}")
    print(rep.pop("table"))
    print(f"wrote {rep['out_dir']}/metrics.json")
    reports.append(rep)
  if len(reports) > 1:
    agg = aggregate(reports)
    print(format_aggregate(agg))
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump(agg, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
