"""Decoding strategies as pure init/step functions, and the driver that runs them."""

from .beam import beam_search
from .driver import generate, stream
from .sample import check_prompts

__all__ = ["beam_search", "check_prompts", "generate", "stream"]
