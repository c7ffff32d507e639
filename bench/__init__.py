"""Benchmarks, run by hand with ``make bench`` or ``python -m bench.<name>``."""
