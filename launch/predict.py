"""Classify one image (+ an optional clinical sentence) with a trained workdir.

  python launch/predict.py --workdir runs/demo --image xray.png [--text "..."] \
      [--checkpoint best|latest|STEP] [--json out.json]

PNG and JPEG are read with PIL, DICOM with pydicom (if installed). Without --text the model
sees a neutral sentence (medvlmoe_jax.eval.predict.DEFAULT_TEXT), since it cannot pool an
empty one. Prints the class probabilities (highest first) and the experts the MoE chose.
A missing, empty, truncated or non-image file is a one-line error; an image under a quarter
of the model's input side is classified with a warning.
"""

import json
import logging

from absl import flags

from medvlmoe_jax import cli
from medvlmoe_jax.eval.predict import Predictor

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_IMAGE = flags.DEFINE_string("image", None, "PNG, JPEG or DICOM file.", required=True)
_TEXT = flags.DEFINE_string("text", None, "Clinical sentence (default: a neutral one).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
_JSON = flags.DEFINE_string("json", None, "Also write the prediction to this JSON file.")


def format_prediction(pred: dict) -> str:
  probs = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])
  width = max(len("class"), *(len(name) for name, _ in probs))
  lines = [f"{'class':<{width}}  probability", "-" * (width + 13)]
  lines += [f"{name:<{width}}  {p:11.4f}" for name, p in probs]
  experts = pred["experts"]
  if isinstance(experts, list):
    lines.append("experts: " + ", ".join(f"#{e['id']} (weight {e['weight']:.3f})" for e in experts))
  else:
    lines.append(f"experts: {experts}")
  if pred["gate"] is not None:
    g = pred["gate"]
    lines.append(f"gate ({g['mode']}): vision {g['vision']:.3f}, text {g['text']:.3f}")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.ERROR)   # Orbax warns that it reads only
  predictor = Predictor.from_workdir(_WORKDIR.value, _CHECKPOINT.value)
  pred = predictor.predict(_IMAGE.value, _TEXT.value)
  print(f"{_IMAGE.value} (checkpoint step {pred['checkpoint_step']}); text: {pred['text']!r}")
  print(format_prediction(pred))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(pred, f, indent=2)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  cli.run(main)
