"""`python -m frostline` runs the command line."""

import sys

from frostline.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
