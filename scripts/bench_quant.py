"""INT8/INT4 kernels, logit error and compiled decode at 7B shapes on the GPU (see llamafn/bench/quant.py)."""

import sys

from llamafn.bench.quant import main

sys.exit(main())
