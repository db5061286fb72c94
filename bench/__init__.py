"""Benchmarks: run on demand, never as part of the test suite."""
