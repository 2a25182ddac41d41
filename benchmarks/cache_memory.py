"""Peak memory of a streaming disk cache: `python benchmarks/cache_memory.py [--samples N ...]`.

Same as `frostline bench memory`; see `frostline bench memory --help` for the flags.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from frostline.app.bench import memory_main  # noqa: E402

sys.exit(memory_main())
