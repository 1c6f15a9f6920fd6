"""The mma layout's dequantising kernel (llamafn.kernels.mma_dequant) against quant.dequantize (the layout
undone in torch, then the natural formula), exactly: in Triton's interpreter on the CPU (float32 out), on a
GPU float32 and bf16."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from llamafn.errors import InputError
from llamafn.kernels import mma_dequant
from llamafn.quant import dequantize, linear
from llamafn.quant.formats import Int4Weight, pack_int4
from llamafn.quant.mma import CHAINS, GROUP_SIZES, to_mma
from tests.kernels.quant_reference import DEVICE
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(mma_dequant.triton is None, reason="triton is not installed")
OUT_DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])   # the interpreter's bf16 casts truncate


@given(seeds(), st.integers(1, 3), st.sampled_from(GROUP_SIZES), st.sampled_from(CHAINS), st.integers(1, 5),
       st.sampled_from(OUT_DTYPES))
def test_the_kernel_gives_the_dequantised_matrix(seed, tiles, group, chains, groups, dtype):
    """1-3 tiles, every group size, 1-8 chains a tile over 1-5 groups (the last chains' padding groups write
    nothing), nibbles and zero points over their whole range: exactly what dequantize gives."""
    g = torch.Generator().manual_seed(seed)
    n, k = 16 * tiles, group * groups
    zero = torch.randint(0, 16, (n, groups), generator=g)
    zero[:, 0], zero[:, -1] = 0, 15
    w = Int4Weight(pack_int4(torch.randint(0, 16, (n, k), generator=g)), (torch.rand(n, groups, generator=g) + 0.1).bfloat16(),
                   zero.to(torch.uint8))
    m4 = to_mma(Int4Weight(*(f.to(DEVICE) for f in w)), chains)
    out = mma_dequant.mma_dequantize_launch(m4.words, m4.records, group, dtype)
    assert out.shape == (n, k) and out.dtype == dtype
    torch.testing.assert_close(out, dequantize(m4, dtype), rtol=0, atol=0)


@pytest.mark.parametrize("words, records", [((2, 4, 100), (2, 3, 8)), ((2, 4, 128), (3, 3, 8)), ((2, 4, 128), (2, 3, 4))])
def test_the_kernel_refuses_what_is_not_an_mma_layout(words, records):
    with pytest.raises(InputError, match="mma_dequantize takes words"):
        mma_dequant.mma_dequantize_launch(torch.zeros(words, dtype=torch.int32), torch.zeros(records, dtype=torch.int64),
                                          64, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="linear dequantises the mma layout with the kernel on a GPU")
@pytest.mark.parametrize("rows, dtype", [(65, torch.bfloat16), (200, torch.bfloat16), (3, torch.float16)])
def test_linear_past_the_gemv_rows_or_in_other_dtypes_takes_the_dequantised_layout(rows, dtype):
    """Rows past the GEMV's 64 (a prefill) and float16 activations multiply the kernel's dense matrix."""
    g = torch.Generator().manual_seed(0)
    w = Int4Weight(pack_int4(torch.randint(0, 16, (64, 512), generator=g)), (torch.rand(64, 4, generator=g) + 0.1).bfloat16(),
                   torch.randint(0, 16, (64, 4), generator=g).to(torch.uint8))
    w = Int4Weight(*(f.cuda() for f in w))
    x = torch.randn(rows, 512, generator=g).to("cuda", dtype)
    torch.testing.assert_close(linear(x, to_mma(w)), F.linear(x, dequantize(w, dtype)), rtol=0, atol=0)
