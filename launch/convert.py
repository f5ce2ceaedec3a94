"""Convert Hugging Face CLIP (vision) and BioGPT (text) checkpoints for `model.init_from`.

  python launch/convert.py --vision openai/clip-vit-large-patch14 --text microsoft/biogpt \
      --out converted/clip_biogpt
  python launch/convert.py --vision /path/to/saved_clip --text /path/to/saved_biogpt --out DIR
  python launch/convert.py --tokenizer_release DIR_WITH_DICT_TXT_AND_BPECODES --out DIR

SRC is a local `save_pretrained` directory or a hub id (needs network). The tokenizer is
copied from the text source when it has vocab.json + merges.txt, else built from the
original release's dict.txt + bpecodes (--tokenizer_release).
"""

import json
import logging

from absl import app, flags

from medvlmoe_jax import cli
from medvlmoe_jax.convert.encoders import convert

_VISION = flags.DEFINE_string("vision", None, "CLIPVisionModel or CLIPModel directory / hub id.")
_TEXT = flags.DEFINE_string("text", None, "BioGptModel or BioGptForCausalLM directory / hub id.")
_RELEASE = flags.DEFINE_string("tokenizer_release", None, "Directory with dict.txt and bpecodes.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  if not (_VISION.value or _TEXT.value or _RELEASE.value):
    raise app.UsageError("give at least one of --vision, --text, --tokenizer_release")
  summary = convert(_OUT.value, vision=_VISION.value, text=_TEXT.value,
                    tokenizer_release=_RELEASE.value)
  print(json.dumps(summary, indent=2))
  print(f"wrote {_OUT.value}; use it with --config.model.init_from={_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
