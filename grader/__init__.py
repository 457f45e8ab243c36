"""Autograder for the L1/L2 Regularization Exercise (Keras/TensorFlow)."""

# The one declaration of the version: pyproject.toml reads it (a dynamic version), `--version` prints it.
__version__ = "0.1.0"
