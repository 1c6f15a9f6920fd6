"""Speculative decoding benchmark (see llamafn/bench/speculative.py)."""

import sys

from llamafn.bench.speculative import main

sys.exit(main())
