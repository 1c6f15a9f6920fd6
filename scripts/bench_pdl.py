"""Programmatic dependent launch on the 7B int4 decode step's kernels in one CUDA graph, on and off (see
llamafn/bench/pdl.py)."""

import sys

from llamafn.bench.pdl import main

sys.exit(main())
