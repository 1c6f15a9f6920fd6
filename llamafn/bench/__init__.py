"""Benchmarks for the lent GPU (never run in unit tests): each measures its hardware ceilings and its
baselines in the same process and writes benchmarks/results/<name>-<card>.json (DESIGN.md, Measuring)."""
