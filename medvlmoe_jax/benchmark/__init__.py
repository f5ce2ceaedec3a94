"""Benchmarks behind `launch/benchmark.py`: each returns a JSON-ready dict of ratios taken in
one process with interleaved repeats (these machines are noisy; absolute times are not)."""
