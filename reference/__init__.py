"""Instructor material for the L1/L2 Regularization Exercise: the distributed notebook, a solved one,
and the solution as importable builders (:mod:`reference.solution`).

Importing this package is cheap on purpose: it does not import TensorFlow. Import
``reference.solution`` for the model builders; they import TensorFlow when first called.
"""
