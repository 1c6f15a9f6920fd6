"""The functional LLaMA core: one idea a file."""

from .attention import attention
from .block import block
from .ffn import feed_forward
from .forward import forward, lm_head, transformer
from .norm import rms_norm
from .rope import apply_rope, inv_frequencies, rope_angles

__all__ = ["apply_rope", "attention", "block", "feed_forward", "forward", "inv_frequencies", "lm_head", "rms_norm",
           "rope_angles", "transformer"]
