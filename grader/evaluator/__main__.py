"""``python -m grader.evaluator EVAL_DIR``: the evaluator process (``grader/evaluator/process.py``)."""

import sys

from grader.evaluator.process import main

sys.exit(main(sys.argv[1:]))
