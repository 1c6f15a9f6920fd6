"""The run-time layouts of quantised weights that decode fastest, by the rows of activations a step
(batch size x tokens a row: 1 for plain decoding, num_beams for beam search, k + 1 for speculative
verification), as measured on an H100 at Llama-2-7B shapes (benchmarks/results/quant-*.json):

- one bf16 row: the GEMVs' plane orders (llamafn.quant.planar), int8 and int4;
- 2-64 bf16 rows: int4 in the tensor-core GEMV's layout (llamafn.quant.mma): at 8 rows a layer's four
  matrices take 60.2 us, 1.09x its one-row time, against 139.2 for tinygemm and 143.5 for the Triton dot
  kernel; at 16 rows 76.6 us against 137.3, at 32 rows 101.9 against 170.6, at 48 rows 144.2 against 288.4
  and at 64 rows 176.9 against 290.2 (each layer at its fastest warps a tile); int8 stays as stored;
- up to FASTER_UP_TO_ROWS rows of other float dtypes: int4 in tinygemm's layout (llamafn.quant.tinygemm);
- anything else (more rows, the CPU): as stored (the Triton dot kernels up to 64 rows, then a dequantised
  cuBLAS matmul); the mma layout past 64 rows is dequantised by one Triton launch for cuBLAS.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..params import tensors
from . import mma, planar, tinygemm
from .linear import KERNEL_MAX_ROWS

# Each layout as fn(params, rows a step); only the mma layout's warps a tile depend on the rows.
LAYOUTS = {"mma": mma.for_mma,
           "tinygemm": lambda params, rows: tinygemm.for_tinygemm(params),
           "gemv": lambda params, rows: planar.for_gemv(params)}


def layouts_for(rows: int, dtype: torch.dtype, device: torch.device) -> tuple[str, ...]:
    """The LAYOUTS to apply, in order, for decode steps of `rows` rows of `dtype` activations on `device`."""
    if not isinstance(rows, int) or rows < 1:
        raise InputError(f"for_decode: rows a step must be an int >= 1, got {rows!r}")
    if device.type != "cuda":
        return ()
    if dtype == torch.bfloat16 and 2 <= rows <= KERNEL_MAX_ROWS and mma.available(device):
        return ("mma",)
    tiny = rows <= tinygemm.FASTER_UP_TO_ROWS and tinygemm.available(device) and not (rows == 1 and dtype == torch.bfloat16)
    return ("tinygemm",) * tiny + ("gemv",) * (rows == 1)


def for_decode(params: dict, rows: int, dtype: torch.dtype) -> dict:
    """A new params dict with the quantised matrices in the layouts fastest for decode steps of `rows` rows
    of `dtype` activations on the params' device; float weights, and params on the CPU, unchanged."""
    held = tensors(params)
    if not held:
        raise InputError("for_decode: the params hold no tensors")
    for name in layouts_for(rows, dtype, held[0].device):
        params = LAYOUTS[name](params, rows)
    return params
