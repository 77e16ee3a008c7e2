"""Benchmarks behind `kiwi bench ...`: each prints a table and can write JSON."""
