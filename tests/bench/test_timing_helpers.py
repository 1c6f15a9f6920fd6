"""The benchmarks' pure helpers (the timings themselves need a GPU and are not unit-tested)."""

from hypothesis import given
from hypothesis import strategies as st

from llamafn.bench.ceilings import L2_DEFEAT_BYTES, copies_past_l2
from llamafn.bench.kernels import rotation
from llamafn.bench.quant import parse_scheme


@given(st.integers(1, 4 * L2_DEFEAT_BYTES), st.integers(1, 64))
def test_enough_copies_to_read_past_l2_unless_capped(n_bytes, most):
    n = copies_past_l2(n_bytes, most)
    assert 1 <= n <= most
    assert n == most or n * n_bytes >= L2_DEFEAT_BYTES
    assert n == 1 or (n - 1) * n_bytes < L2_DEFEAT_BYTES                   # no more than needed


@given(st.integers(1, 2 * L2_DEFEAT_BYTES), st.integers(1, 16))
def test_rotation_cycles_distinct_sets_to_at_least_the_calls(n_bytes, calls):
    made = []
    sets = rotation(lambda: made.append(object()) or made[-1], n_bytes, calls)
    assert len(made) == copies_past_l2(n_bytes)
    assert len(sets) == max(calls, len(made))
    assert all(s is made[i % len(made)] for i, s in enumerate(sets))


def test_scheme_names():
    assert parse_scheme("int4-g32") == ("int4", 32)
    assert parse_scheme("int4-g128+tinygemm") == ("int4", 128)
    assert parse_scheme("int8") == ("int8", 0)
    assert parse_scheme("bf16") == ("bf16", 0)


def test_bench_speculative_checks_its_ks_before_timing_anything(capsys):
    from llamafn.cli import main

    assert main(["bench", "speculative", "--ks", "4,0"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "k (draft tokens a step) must be in 1..16, got 0" in err
