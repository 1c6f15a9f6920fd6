"""Kernels behind a registry (DESIGN.md, convention 7): each op with a fast path has an eager
reference, and backends are chosen by name."""

from .registry import backends, get, get_or_reference, register
from . import flash_attention, fused  # noqa: E402,F401  (register the "triton" backends)

__all__ = ["backends", "get", "get_or_reference", "register"]
