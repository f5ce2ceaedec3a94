"""Metrics (AUC, bootstrap CI) and evaluation of a trained workdir."""
