"""Decoding strategies as pure init/step functions, and the driver that runs them."""

from .driver import beam_search, check_prompts, generate, stream

__all__ = ["beam_search", "check_prompts", "generate", "stream"]
