"""``python -m sdar_rt.bench``: the same as ``sdar-bench``."""

import sys

from .cli import main

sys.exit(main())
