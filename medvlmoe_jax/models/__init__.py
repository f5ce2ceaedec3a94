"""Flax NNX modules: the two encoder streams, the fusion head and the full model."""

from medvlmoe_jax.models.medvlmoe import MedVLMoE, build_model

__all__ = ["MedVLMoE", "build_model"]
