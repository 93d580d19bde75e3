"""Benchmarks for prefect-seedream: `python -m bench` runs every figure and rewrites BENCHMARKS.md.

Each figure is a module `bench/fig_*.py` with `run() -> dict`; every figure is a ratio against a
baseline measured in the same run, interleaved (A, B, A, B, ...) so machine load hits both alike.
Nothing here is a test and nothing asserts a timing: read the numbers.
"""
