"""``python -m coarseflow.cli``: the command line (``coarseflow`` itself: pyproject's
[project.scripts], coarseflow.cli:main)."""

import sys

from coarseflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
