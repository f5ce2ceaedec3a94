"""Sparse mixture of experts: routing (who goes where), dispatch (how), the layer (params)."""
