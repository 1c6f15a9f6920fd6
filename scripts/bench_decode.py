"""Decode benchmark on the GPU; the same as `llamafn bench decode` (see llamafn/bench/decode.py)."""

import sys

from llamafn.bench.decode import main

sys.exit(main())
