"""llamafn.kernels.runtime: how kernels are launched from the custom ops, and the ops' shape functions."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip("triton")

from llamafn.kernels import runtime  # noqa: E402


class Recorder:
    """Stands in for a Triton kernel: records each launch's grid and arguments."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


def test_launch_asks_for_a_programmatic_dependent_launch_only_for_pdl_kernels(monkeypatch):
    kernel = Recorder()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    x = torch.zeros(4)
    runtime.launcher(kernel)[(2,)](x, 3, PDL=True, BLOCK=16)
    runtime.launcher(kernel)[(2,)](x, 3, PDL=False, BLOCK=16)
    runtime.launcher(kernel)[(2,)](x, 3, BLOCK=16)
    assert [k for _, _, k in kernel.launches] == [dict(PDL=True, BLOCK=16, launch_pdl=True),
                                                  dict(PDL=False, BLOCK=16), dict(BLOCK=16)]
    assert all(grid == (2,) and args == (x, 3) for grid, args, _ in kernel.launches)


@pytest.mark.parametrize("capturing", [False, True])
def test_an_eager_pdl_launch_follows_an_empty_plain_one(monkeypatch, capturing):
    """Outside graph capture the kernel before a PDL launch is an empty plain launch (see Launch)."""
    order = []
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    monkeypatch.setattr(runtime, "plain_barrier_kernel",
                        {(1,): lambda *args, **kwargs: order.append(("barrier", args, kwargs))})
    kernel = Recorder()
    runtime.launcher(kernel)[(3,)](torch.zeros(2), PDL=True)
    runtime.launcher(kernel)[(3,)](torch.zeros(2), PDL=False)
    assert order == ([] if capturing else [("barrier", (), {})]) and len(kernel.launches) == 2


def test_launch_does_nothing_on_fake_tensors():
    kernel = Recorder()
    with FakeTensorMode():
        runtime.launcher(kernel)[(1,)](torch.empty(4), PDL=True)
    assert kernel.launches == []


def test_pdl_is_off_in_the_interpreter_and_off_the_gpu(monkeypatch):
    assert not runtime.pdl(torch.device("cpu"))
    monkeypatch.setattr(runtime, "INTERPRET", True)
    assert not runtime.pdl(torch.device("cuda"))


def test_the_ops_shape_functions_allocate_their_outputs_without_launching():
    """torch.compile runs each op's own body on fake tensors (kernel_op): outputs as on a GPU, nothing run."""
    with FakeTensorMode():
        x = torch.empty(3, 64, dtype=torch.bfloat16, device="cuda")
        w = torch.empty(64, dtype=torch.float32, device="cuda")
        normed, h = torch.ops.llamafn.add_rms_norm(x, x, w, 1e-5)
        act = torch.ops.llamafn.swiglu(x, x)
    assert (normed.shape, normed.dtype, h.shape, h.dtype) == ((3, 64), torch.float32, (3, 64), torch.bfloat16)
    assert (act.shape, act.dtype, act.device.type) == ((3, 64), torch.bfloat16, "cuda")
