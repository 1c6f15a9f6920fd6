"""What every Triton kernel module shares: the optional `triton` import, whether kernels run in
Triton's interpreter (TRITON_INTERPRET=1, the CPU tests), how a kernel is launched (directly, from
inside a custom op that torch.compile captures whole: `kernel_op`, `launcher`), programmatic dependent
launch (`pdl`), and the check that a kernel can run at all."""

from __future__ import annotations

import functools
import os

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..errors import InputError

try:
    import triton
except ImportError:                      # triton is optional on the CPU: the reference backends run instead
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if triton is not None:
    import triton.language as tl

    @triton.jit
    def dot(a, b):
        """tl.dot in IEEE fp32 for float32 operands (the default TF32 keeps 10 mantissa bits), else the
        tensor cores' fp16/bf16 product with fp32 accumulation."""
        if a.dtype == tl.float32:
            return tl.dot(a, b, input_precision="ieee")
        else:
            return tl.dot(a, b)

    @triton.jit
    def release_dependents(PDL: tl.constexpr):
        """Let the next kernel in the stream launch now (PDL: a programmatic dependent launch, Hopper+)."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def await_producers(PDL: tl.constexpr):
        """Wait until the kernels before this one have finished and their writes are visible (PDL); every
        load of their outputs and every store comes after it."""
        if PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def plain_barrier_kernel():
        """Nothing: launched plainly before an eager programmatic dependent launch (see Launch)."""
        pass


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def pdl(device: torch.device) -> bool:
    """Whether kernels on `device` are built for programmatic dependent launch (PDL: CUDA capability 9+,
    not in the interpreter; LLAMAFN_PDL=0 turns it off). Such a kernel releases its successor as it starts
    and waits for its predecessor before touching anything the predecessor writes, so the successor's
    launch and whatever it reads that no kernel writes (weights) overlap the predecessor's tail."""
    return (not INTERPRET and triton is not None and device.type == "cuda" and torch.cuda.is_available()
            and os.environ.get("LLAMAFN_PDL", "1") == "1" and torch.cuda.get_device_capability(device)[0] >= 9)


def launcher(kernel) -> "Launch":
    """kernel[grid](...) as to launch it (see Launch)."""
    return Launch(kernel)


class Launch:
    """A direct Triton launch from inside a custom op (`kernel_op`): nothing for fake tensors (the op's
    shape function is its own body, run on them by torch.compile), and a programmatic dependent launch for
    a kernel given PDL=True. The ops are opaque to inductor, which places them in its CUDA graph as they
    are; traced into the graph instead (torch.library.triton_op), they were launched by inductor without
    launch attributes, and its mutation analysis, which cannot read inline PTX or griddepcontrol on the
    pinned GPU stack, took every argument for written.

    A PDL kernel may read, before its wait, what no kernel of the step writes (the GEMVs' weights); its
    predecessor's writes are only sure to be visible after the wait. Inside a captured graph the weights
    are static inputs written long before; an eager launch (no capture) is preceded by an empty plain one,
    which starts only when everything before it has finished, so a weight written by the kernel just
    before is visible too. Eager and captured launches share one compiled variant (a kernel compiled
    during capture would load its module there, which CUDA forbids)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if any(isinstance(a, FakeTensor) for a in args):
                return
            if kwargs.get("PDL"):
                if not torch.cuda.is_current_stream_capturing():
                    plain_barrier_kernel[(1,)]()
                kwargs = dict(kwargs, launch_pdl=True)
            self.kernel[grid](*args, **kwargs)
        return launch


def kernel_op(name: str, mutates_args=()):
    """torch.library.custom_op(name) whose fake (shape) implementation is the op itself: its launches
    do nothing on fake tensors, and its outputs are allocated as on a GPU."""
    def wrap(fn):
        op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        op.register_fake(fn)
        return op
    return wrap


def require_triton(device: torch.device | str, what: str) -> None:
    """Raise InputError unless Triton kernels can run for tensors on `device`."""
    if triton is None or not (torch.device(device).type == "cuda" or INTERPRET):
        raise InputError(f"{what} needs a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)")
