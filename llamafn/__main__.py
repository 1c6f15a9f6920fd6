"""`python -m llamafn` is the `llamafn` command."""

import sys

from .cli import main

sys.exit(main())
