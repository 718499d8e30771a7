"""Benchmarks: each module runs with `python -m bench.<name>` and prints same-run ratios."""
