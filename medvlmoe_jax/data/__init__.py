"""Datasets (as in-memory splits or record sources), tokenizers and the Grain pipeline."""
