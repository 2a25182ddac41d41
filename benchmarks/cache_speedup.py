"""The activation cache against plain Keras: `python benchmarks/cache_speedup.py [--epochs N ...]`.

Same as `frostline bench cache`; see `frostline bench cache --help` for the flags.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from frostline.app.bench import main  # noqa: E402

sys.exit(main())
