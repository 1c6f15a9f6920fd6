"""The tensor-core int4 GEMV (llamafn.kernels.int4_mma) against x @ dequantize(w)^T: on the CPU its fp32
twin in Triton's interpreter checks the words' order, the addresses and the chains' reduction; on a GPU
the same tests run the PTX."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from llamafn.errors import InputError
from llamafn.kernels import int4_mma
from llamafn.quant.formats import Int4Weight, pack_int4
from llamafn.quant.mma import CHAINS, GROUP_SIZES, to_mma
from tests.kernels.quant_reference import DEVICE, check
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(int4_mma.triton is None, reason="triton is not installed")


def int4_weight(g: torch.Generator, n: int, k: int, group: int) -> Int4Weight:
    """Nibbles over their whole range, zero points anywhere in [0, 15] and at its ends, bf16 scales."""
    G = k // group
    zero = torch.randint(0, 16, (n, G), generator=g)
    zero[:, 0] = 0
    zero[:, -1] = 15
    return Int4Weight(pack_int4(torch.randint(0, 16, (n, k), generator=g)),
                      (torch.rand(n, G, generator=g) + 0.1).bfloat16(), zero.to(torch.uint8))


@given(seeds(), st.integers(1, 40), st.integers(1, 2), st.sampled_from(GROUP_SIZES),
       st.sampled_from(CHAINS), st.integers(1, 5), st.booleans(), st.booleans())
@example(seed=0, m=12, tiles=2, group=128, chains=2, groups=3, pair=True, chunk_pair=False)  # two tiles a program
@example(seed=1, m=37, tiles=2, group=128, chains=4, groups=3, pair=True, chunk_pair=True)   # and two chunks
@example(seed=2, m=20, tiles=1, group=128, chains=1, groups=2, pair=False, chunk_pair=True)  # an empty chunk b
def test_int4_mma_matches_the_dequantised_product(seed, m, tiles, group, chains, groups, pair, chunk_pair):
    """1-40 rows of x (8 a chunk, every column of the mma's B, a last chunk's unused ones masked), 1-2
    tiles of 16 rows, every group size (on a GPU group 128 takes the prefetching loop; the interpreter's
    twin has one loop), 1-8 chains a tile over 1-5 groups (the last chains' missing groups masked); at
    group 128 with two tiles, both tiles in one program or one each, and one or two chunks a program."""
    g = torch.Generator().manual_seed(seed)
    n, k = 16 * tiles, group * groups
    w = int4_weight(g, n, k, group)
    x = torch.randn(m, k, generator=g).bfloat16()
    m4 = to_mma(Int4Weight(*(f.to(DEVICE) for f in w)), chains)
    assert m4.words.shape == (tiles, -(-groups // chains) * group // 64, 128 * chains)
    assert m4.words.dtype == torch.int32 and m4.shape == (n, k) and m4.group_size == group
    assert m4.records.shape == (tiles, k // group, 8) and m4.records.dtype == torch.int64
    a_program = 2 if pair and tiles == 2 and group == 128 else 1
    chunks = 2 if chunk_pair and group == 128 else 1
    out = int4_mma.int4_mma_launch(x.to(DEVICE), m4.words, m4.records, group, a_program, chunks)
    check(out, x.to(DEVICE), Int4Weight(*(f.to(DEVICE) for f in w)))


def test_two_tiles_a_program_where_x_is_reread_and_the_tiles_pair_up():
    assert int4_mma.tiles_a_program(9, 256, 128) == int4_mma.tiles_a_program(32, 1376, 128) == 2
    assert int4_mma.tiles_a_program(8, 256, 128) == 1                                  # one program a tile reads x once
    assert int4_mma.tiles_a_program(16, 255, 128) == 1 and int4_mma.tiles_a_program(16, 256, 64) == 1


def test_two_chunks_of_x_a_program_past_8_rows_at_group_128():
    assert int4_mma.chunks_a_program(9, 128) == int4_mma.chunks_a_program(64, 128) == 2
    assert int4_mma.chunks_a_program(8, 128) == 1 and int4_mma.chunks_a_program(16, 64) == 1
    assert [int4_mma.programs_a_tile(m, 2) for m in (1, 16, 17, 64)] == [1, 1, 2, 4]


@pytest.mark.parametrize("tiles, chunks, group, message", [
    (3, 1, 128, "got 3 for 2 tiles"), (2, 1, 64, "got 2 for 2 tiles in groups of 64"),
    (1, 3, 128, "two for group 128; got 3"), (1, 2, 64, "got 2 in groups of 64")])
def test_the_kernel_refuses_programs_it_cannot_run(tiles, chunks, group, message):
    w = to_mma(Int4Weight(pack_int4(torch.zeros(32, 256, dtype=torch.int64)), torch.ones(32, 256 // group).bfloat16(),
                          torch.zeros(32, 256 // group, dtype=torch.uint8)), 1)
    with pytest.raises(InputError, match=message):
        int4_mma.int4_mma_launch(torch.zeros(1, 256).bfloat16(), w.words, w.records, group, tiles, chunks)


def test_the_kernel_refuses_rows_that_are_not_bf16():
    w = to_mma(Int4Weight(pack_int4(torch.zeros(16, 128, dtype=torch.int64)), torch.ones(16, 2).bfloat16(),
                          torch.zeros(16, 2, dtype=torch.uint8)), 2)
    with pytest.raises(InputError, match=r"bf16 rows with K a multiple of 4, got \(1, 128\) torch.float32"):
        int4_mma.int4_mma_launch(torch.zeros(1, 128), w.words, w.records, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the layout check runs PTX on a GPU")
@pytest.mark.parametrize("chains", CHAINS)
def test_this_triton_lays_out_the_words_as_the_shuffle_assumes(chains):
    assert int4_mma.layout_ok(torch.device("cuda"), chains)


def test_rows_that_start_off_an_8_byte_boundary_are_read_as_quads():
    """A row view whose storage starts 2 bytes in (x[:, 1:] of a wider buffer) is copied before the int64
    view of its quads."""
    g = torch.Generator().manual_seed(0)
    w = Int4Weight(pack_int4(torch.randint(0, 16, (16, 128), generator=g)), torch.rand(16, 2, generator=g).bfloat16(),
                   torch.randint(0, 16, (16, 2), generator=g).to(torch.uint8))
    w = Int4Weight(*(f.to(DEVICE) for f in w))
    x = torch.randn(1, 129, generator=g).bfloat16().to(DEVICE)[:, 1:]
    m4 = to_mma(w, 2)
    check(int4_mma.int4_mma_launch(x, m4.words, m4.records, 64), x, w)
