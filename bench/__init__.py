"""Benchmarks that print JSON: ``python -m bench all [--quick]`` (see docs/benchmarks.md)."""

import cbir  # noqa: F401  first, as in every cbir process: it picks Arrow's allocator
