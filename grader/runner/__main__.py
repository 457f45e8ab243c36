"""``python -m grader.runner JOB_DIR``: the runner process (``grader/runner/process.py``)."""

import sys

from grader.runner.process import main

sys.exit(main(sys.argv[1:]))
