"""Sparse mixture of experts: routing (who goes where), experts (the MLP), dispatch (how),
the layer (parameters)."""
