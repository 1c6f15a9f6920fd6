"""Verify-forward and beam-search cost at 7B shapes on the GPU (see llamafn/bench/verify.py)."""

import sys

from llamafn.bench.verify import main

sys.exit(main())
