"""Training-time benchmarks of the reference solution: the recap fit and the CNN fit, per profile.

    .venv/bin/python -m pytest benchmarks/ --benchmark-enable --profile tiny \
        --benchmark-json benchmarks/results/$(hostname)-tiny.json
    .venv/bin/python -m pytest benchmarks/ --benchmark-enable --profile tiny \
        --benchmark-compare benchmarks/results/MACHINE-tiny.json --benchmark-compare-fail=mean:25%

pytest-benchmark stores the machine (CPU, cores, Python) with every result, so a saved run can be
compared against another on the same machine only. These run the same code the notebooks run, in
this process, without the grader around it: the student-facing training times in the baselines are
measured inside the kernel instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from grader.datasets import DatasetStore, boston_split
from reference import solution


@pytest.fixture(scope="module")
def cifar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    profile = request.config.getoption("--profile") or "smoke"
    data = DatasetStore(profile, cache_dir=tmp_path_factory.mktemp("data")).cifar10()
    return data.x_train.astype("float32") / 255, data.y_train


def _seeded() -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_recap_fit(benchmark: Any, penalty: str) -> None:
    x_train, _, y_train, _ = boston_split()

    def fit() -> Any:
        _seeded()
        model = solution.build_recap_model(penalty)
        return model.fit(x_train, y_train, epochs=solution.RECAP_EPOCHS, batch_size=solution.RECAP_BATCH, verbose=0)

    history = benchmark.pedantic(fit, rounds=3, iterations=1, warmup_rounds=0)
    assert len(history.history["loss"]) == solution.RECAP_EPOCHS
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_cnn_fit(benchmark: Any, penalty: str, cifar: Any) -> None:
    x_train, y_train = cifar

    def fit() -> Any:
        _seeded()
        model = solution.build_cnn(penalty)
        return model.fit(x_train, y_train, epochs=solution.CNN_EPOCHS, verbose=0)

    history = benchmark.pedantic(fit, rounds=1, iterations=1, warmup_rounds=0)
    assert len(history.history["loss"]) == solution.CNN_EPOCHS

