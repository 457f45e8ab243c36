"""Threads per kernel: N notebooks graded at once (pytest -n N) share the cores without oversubscribing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader import machine, settings
from grader.runner.process import _kernel_env


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 1, 16), (16, 3, 5), (16, 16, 1), (1, 4, 1)],
)
def test_each_kernel_gets_its_share_of_the_cores(cores: int, workers: int, threads: int) -> None:
    assert machine.threads_per_kernel(cores, workers) == threads
    assert machine.threads_per_kernel(cores, workers) * workers <= max(cores, workers)


def test_auto_divides_the_available_cores_by_the_workers() -> None:
    cores = machine.available_cores()
    assert cores >= 1
    assert settings.resolve_threads("cores", 1, environ={}) == settings.resolve_threads("cores", 2, environ={}) == cores
    assert settings.resolve_threads(None, 2, environ={}) == cores  # the default, cores, whatever the workers
    assert settings.resolve_threads("auto", 1, environ={}) == cores
    assert settings.resolve_threads(" AUTO ", 2, environ={}) == max(1, cores // 2)
    assert settings.resolve_threads("3", 2, environ={}) == 3
    assert settings.resolve_threads(None, 2, environ={"GRADER_THREADS": "5"}) == 5
    assert settings.resolve_threads("auto", 3, environ={}, cores=16) == 5


def test_the_parser_checks_the_value_once_and_the_rule_only_counts() -> None:
    assert [settings.threads(t) for t in ("cores", " Auto ", "4")] == ["cores", "auto", 4]
    assert settings.threads_setting(4, 8, cores=2) == 4
    assert settings.threads_setting("cores", 8, cores=2) == 2
    assert settings.threads_setting("auto", 8, cores=2) == 1


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_a_bad_thread_count_is_a_usage_error(text: str) -> None:
    with pytest.raises(settings.UsageError, match="option --threads: expected cores, auto or a positive number"):
        settings.resolve("threads", text, environ={})


def test_the_kernel_gets_the_thread_count_in_every_library_variable(tmp_path: Path) -> None:
    env = _kernel_env(tmp_path, 0, 3)
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[var] == "3"
    assert "OMP_NUM_THREADS" not in _kernel_env(tmp_path, 0, None)
