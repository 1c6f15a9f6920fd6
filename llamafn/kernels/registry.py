"""The kernel registry: `register(op, name)` decorates an implementation; `get(op, name)` picks one."""

from __future__ import annotations

from typing import Callable

from ..errors import InputError

_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(op: str, name: str) -> Callable[[Callable], Callable]:
    def wrap(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[name] = fn
        return fn
    return wrap


def backends(op: str) -> list[str]:
    return sorted(_REGISTRY.get(op, {}))


def get_or_reference(op: str, name: str) -> Callable:
    """The `name` backend of `op` if it has one, else its "reference": a backend name picks a kernel
    set, and ops without a kernel of that name run their eager reference."""
    return _REGISTRY.get(op, {}).get(name) or get(op, "reference")


def get(op: str, name: str) -> Callable:
    try:
        return _REGISTRY[op][name]
    except KeyError:
        raise InputError(f"unknown {op} backend {name!r}; available: {', '.join(backends(op)) or 'none'}") from None
