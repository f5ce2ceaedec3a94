"""Losses, optimizer, train state, checkpoints and the training loop."""
