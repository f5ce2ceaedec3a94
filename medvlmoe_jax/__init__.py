"""MedVLMoE in JAX/Flax NNX: vision + text streams, cross-attention fusion, sparse Top-2 MoE."""

__version__ = "0.1.0"
