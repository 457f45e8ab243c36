"""Fixtures shared by several test modules (plain builders are in ``tests/builders.py``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from grader.grade import Grader


@pytest.fixture
def grader(tmp_path: Path) -> Grader:
    """A grader on the ``tiny`` profile whose grades and cache dirs are under ``tmp_path``."""
    from grader.grade import Grader
    from grader.settings import GradingConfig

    return Grader(GradingConfig(grades_dir=tmp_path / "grades", profile="tiny", cache_dir=tmp_path / "cache"))


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """The job dir of submission ``student`` under the ``grader`` fixture's grades dir, with an empty
    ``artifacts/models/`` as the kernel's recorder leaves it before the first fit."""
    job = tmp_path / "grades" / ".jobs" / "student"
    (job / "artifacts" / "models").mkdir(parents=True)
    return job


def _patchable_methods() -> dict[str, Any]:
    """The TensorFlow and Keras methods the kernel's recorder replaces, as they are now (none before the
    test process imports TensorFlow)."""
    if "tensorflow" not in sys.modules or "keras" not in sys.modules:
        return {}
    import keras
    import tensorflow as tf
    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    owners = {"Model": keras.Model, "GradientTape": tf.GradientTape, "Function": polymorphic_function.Function,
              "Optimizer": keras.optimizers.Optimizer}
    names = ("fit", "evaluate", "train_on_batch", "__call__", "gradient", "__init__", "__enter__", "__exit__", "apply")
    return {f"{o}.{n}": owner.__dict__.get(n) for o, owner in owners.items() for n in names}


@pytest.fixture(autouse=True)
def _recorder_left_installed() -> Iterator[None]:
    """Fails a test that leaves the recorder's patches on TensorFlow or Keras: every later test of this
    process would then run through a recorder nobody reads."""
    yield
    left = [name for name, method in _patchable_methods().items()
            if "_install_recorder.<locals>" in getattr(getattr(method, "fget", method), "__qualname__", "")]
    assert not left, f"methods still patched after the test: {left}"
