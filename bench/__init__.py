"""Entraide benchmarks: ``scripts/bench [SCENARIO ...] [--quick]`` (docs/benchmarks.md)."""
