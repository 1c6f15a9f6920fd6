"""Attention kernels (FlashAttention-2 prefill, flash-decoding) against SDPA and naive on the GPU (see llamafn/bench/kernels.py)."""

import sys

from llamafn.bench.kernels import main

sys.exit(main())
