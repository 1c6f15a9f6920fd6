"""Kernels behind a registry (DESIGN.md, convention 7): each op with a fast path has an eager
reference, and backends are chosen by name."""

from .registry import backends, get, register

__all__ = ["backends", "get", "register"]
