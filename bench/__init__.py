"""Benchmarks that print JSON: ``python -m bench all [--quick]`` (see docs/benchmarks.md)."""
