"""INT8 and INT4 weight-only quantisation as pure params transforms, and the `linear` that runs them."""

from .decode_layout import for_decode
from .formats import (Int4GemvWeight, Int4MmaWeight, Int4TinyGemmWeight, Int4Weight, Int8GemvWeight, Int8Weight,
                      dequantize, is_quantized, quantize_int4, quantize_int8)
from .linear import embedding, linear
from .mma import for_mma
from .planar import for_gemv
from .tinygemm import for_tinygemm
from .transform import SCHEMES, dequantize_params, from_tensors, quantize, quantizer, scheme_of, to_tensors

__all__ = [
    "Int4GemvWeight", "Int4MmaWeight", "Int4TinyGemmWeight", "Int4Weight", "Int8GemvWeight", "Int8Weight", "SCHEMES",
    "dequantize", "dequantize_params", "embedding", "for_decode", "for_gemv", "for_mma", "for_tinygemm", "from_tensors",
    "is_quantized", "linear", "quantize", "quantize_int4", "quantize_int8", "quantizer", "scheme_of", "to_tensors",
]
