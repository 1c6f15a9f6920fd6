"""llamafn: LLaMA inference in the functional style (a params dict, pure layers, an explicit cache)."""

from .cache import KVCache, init_cache
from .checkpoint import load, save
from .config import ModelConfig, preset
from .decode import generate, stream
from .errors import LlamafnError
from .model import forward
from .params import check_params, init_params
from .tokenizer import Tokenizer

__all__ = [
    "KVCache", "LlamafnError", "ModelConfig", "Tokenizer", "check_params", "forward", "generate",
    "init_cache", "init_params", "load", "preset", "save", "stream",
]
