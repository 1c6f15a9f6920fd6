"""bench verify's --weights and --max-k and bench quant's schemes are checked before any GPU work."""

import pytest

from llamafn.bench import quant, verify


@pytest.mark.parametrize("weights", ["int3", "int4", "int4-gx", "int4-g33", "int8-g128", "fp8", "int4-g128+mma",
                                     "int8,int4-g128"])
def test_weights_that_are_not_one_scheme_are_refused(weights, capsys):
    with pytest.raises(SystemExit) as exit:
        verify.main(["--weights", weights])
    assert exit.value.code == 2 and f"--weights takes one of bf16, int8 or int4-gN with N 32, 64, 128 or 256; got " \
        f"{weights!r}" in capsys.readouterr().err


@pytest.mark.parametrize("max_k", ["0", "17"])
def test_bench_verify_refuses_a_max_k_the_cli_cannot_run(max_k, capsys):
    with pytest.raises(SystemExit) as exit:
        verify.main(["--max-k", max_k])
    assert exit.value.code == 2 and f"--max-k takes 1..16 (the CLI's range of --k); got {max_k}" in capsys.readouterr().err


@pytest.mark.parametrize("flags, bad", [
    (["--schemes", "int4-g100"], "int4-g100"), (["--schemes", "bf16,int5"], "int5"),
    (["--decode-schemes", "int8+mma"], "int8+mma"),
    (["--decode-schemes", "int4-g128+gemv,int4-g64+tiny"], "int4-g64+tiny"),
])
def test_bench_quant_checks_its_schemes_before_any_gpu_work(flags, bad, capsys):
    with pytest.raises(SystemExit) as exit:
        quant.main(flags)
    assert exit.value.code == 2 and f"; got {bad!r}" in capsys.readouterr().err
