"""Run a worker by hand: ``python -m pypods._worker POD_NAME POD_DIR PROJECT_ROOT`` (for debugging)."""

import sys

from .serve import main

sys.exit(main(sys.argv[1:]))
