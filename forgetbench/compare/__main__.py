"""``python -m forgetbench.compare``: the same as ``forgetbench compare``."""

import sys

from forgetbench.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
