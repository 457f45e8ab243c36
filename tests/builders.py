"""Builders shared by several test modules: plain functions, imported as ``from builders import ...``.

pytest's default ("prepend") import mode puts this folder on ``sys.path`` for the test modules in it (it
is not a package), so they import this module by its bare name. Fixtures live in ``tests/conftest.py``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nbformat


def notebook_bytes(source: str = "x = 1") -> bytes:
    """A notebook of one code cell, as the bytes of its .ipynb file."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    return nbformat.writes(nb).encode()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip at ``path`` holding ``members`` (name -> bytes); returns ``path``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def save_dense(path: Path, value: float) -> None:
    """A one-layer model whose kernel is all ``value`` (0.0: every weight near zero), saved at ``path``."""
    import keras

    inputs = keras.Input((4,))
    dense = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(value))
    model = keras.Model(inputs, dense(inputs))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
