"""Autograder for the L1/L2 Regularization Exercise (Keras/TensorFlow).

Laid out by process: ``kernel/`` runs inside the student's kernel, ``runner/`` and ``evaluator/`` are
the two sandboxed processes (and the orchestrator's side of each), ``judging/`` and ``reports/`` are
the orchestrator's decisions and outputs; ``grade.py`` (the orchestrator), ``settings.py`` and the
front ends are here. See docs/architecture.md.
"""

# The one declaration of the version: pyproject.toml reads it (a dynamic version), `--version` prints it.
__version__ = "0.1.0"
