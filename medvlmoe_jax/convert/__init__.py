"""Conversion of Hugging Face checkpoints and tokenizers into this project's formats.

The stable loading API: `load_vision_encoder(path)` and `load_text_encoder(path)`, where
`path` is the `--out` directory of `launch/convert.py`.
"""

from medvlmoe_jax.convert.encoders import (convert, load_text_encoder,
                                           load_vision_encoder)
from medvlmoe_jax.models.pretrained import init_from

__all__ = ["convert", "init_from", "load_text_encoder", "load_vision_encoder"]
