"""Benchmarks (``make bench``): long runs that measure, never tests."""
