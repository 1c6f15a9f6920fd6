"""bench verify's --weights is checked before any GPU work."""

import pytest

from llamafn.bench import verify


@pytest.mark.parametrize("weights", ["int3", "int4", "int4-gx", "int8-g128", "fp8"])
def test_weights_that_are_no_scheme_are_refused(weights, capsys):
    with pytest.raises(SystemExit) as exit:
        verify.main(["--weights", weights])
    assert exit.value.code == 2 and f"--weights takes bf16, int8 or int4-gN, got {weights!r}" in capsys.readouterr().err
