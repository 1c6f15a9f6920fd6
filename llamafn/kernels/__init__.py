"""Kernels behind a registry (DESIGN.md, convention 7): each op with a fast path has an eager
reference, and backends are chosen by name."""

from .registry import backends, get, register
from . import flash_attention  # noqa: E402,F401  (registers the "triton" attention backend)

__all__ = ["backends", "get", "register"]
