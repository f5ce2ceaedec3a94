"""Flax NNX modules: the two encoder streams, the fusion head and the full model."""
