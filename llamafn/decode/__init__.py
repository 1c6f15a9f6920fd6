"""Decoding strategies as pure init/step functions, and the driver that runs them."""

from .driver import check_prompts, generate, stream

__all__ = ["check_prompts", "generate", "stream"]
