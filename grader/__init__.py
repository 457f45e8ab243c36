"""Autograder for the L1/L2 Regularization Exercise (Keras/TensorFlow)."""

__version__ = "0.1.0"
