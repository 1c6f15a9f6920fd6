"""What the quantised kernels' tests share: the device they run on, the dtypes, inputs, and the check
against x @ dequantize(w)^T.

Tolerances, relative to the largest sum of |x| |w| over the outputs (what rounding errors scale with; a
largest output can be far smaller where products cancel): float32, 1e-4 (the kernels accumulate in fp32
in a different order); float16, the output's own rounding (2^-10 relative) plus the same; bfloat16,
1e-2 (the output's rounding, and the int4 gemv's products and 4-term sums rounded to bf16 in packed math)."""

import torch

from llamafn.quant.formats import dequantize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def check(out: torch.Tensor, x: torch.Tensor, w) -> None:
    dense = dequantize(w, torch.float32)
    reference = x.float() @ dense.T                                               # (M, N)
    assert out.shape == reference.shape and out.dtype == x.dtype
    scale = (x.float().abs() @ dense.abs().T).max().item() + 1e-6
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[x.dtype] * scale
    torch.testing.assert_close(out.float(), reference, atol=tol, rtol=0)


def inputs(seed: int, m: int, n: int, k: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g).to(DEVICE, dtype),
            (torch.randn(n, k, generator=g) * k ** -0.5).to(DEVICE, dtype))
