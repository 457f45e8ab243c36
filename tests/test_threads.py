"""Threads per kernel: N notebooks graded at once (pytest -n N) share the cores without oversubscribing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader import plugin
from grader.runner.__main__ import _kernel_env


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 1, 16), (16, 3, 5), (16, 16, 1), (1, 4, 1)],
)
def test_each_kernel_gets_its_share_of_the_cores(cores: int, workers: int, threads: int) -> None:
    assert plugin.threads_per_kernel(cores, workers) == threads
    assert plugin.threads_per_kernel(cores, workers) * workers <= max(cores, workers)


def test_auto_divides_the_available_cores_by_the_workers() -> None:
    cores = plugin.available_cores()
    assert cores >= 1
    assert plugin.threads_setting("cores", 1) == plugin.threads_setting("cores", 2) == cores
    assert plugin.threads_setting("auto", 1) == cores
    assert plugin.threads_setting(" AUTO ", 2) == max(1, cores // 2)
    assert plugin.threads_setting("3", 2) == 3


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_a_bad_thread_count_is_a_usage_error(text: str) -> None:
    from grader import settings

    with pytest.raises(settings.UsageError, match="option --threads: expected cores, auto or a positive number"):
        settings.resolve("threads", text, environ={})


def test_the_kernel_gets_the_thread_count_in_every_library_variable(tmp_path: Path) -> None:
    env = _kernel_env(tmp_path, 0, 3)
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[var] == "3"
    assert "OMP_NUM_THREADS" not in _kernel_env(tmp_path, 0, None)
