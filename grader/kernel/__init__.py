"""Code that runs inside the student's kernel, the one untrusted process.

``bootstrap.py`` is copied into each job dir and executed by the runner as the notebook's first cell.
It imports only the standard library and what the kernel already has (numpy, TensorFlow, Keras),
never anything else of the grader: whatever it computes is a claim, recorded for the grader's own
processes to verify (``tests/test_layout.py`` holds it to this).
"""

from pathlib import Path

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
