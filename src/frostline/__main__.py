"""`python -m frostline` runs the command line."""

import sys

from frostline.cli import main

sys.exit(main())
