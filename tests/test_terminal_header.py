"""What the session header tells an instructor: the sandbox, not the benchmark plugin's timer settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _header(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout.split("collected", 1)[0]


def test_grading_header_names_the_sandbox_and_leaves_out_benchmark_settings() -> None:
    header = _header("grader/", "--submissions", "submissions")
    assert "sandbox:" in header
    assert "benchmark:" not in header


def test_benchmark_settings_stay_in_the_header_when_benchmarks_are_enabled() -> None:
    header = _header("benchmarks/", "--benchmark-enable", "--profile", "tiny")
    assert "benchmark: " in header and "min_rounds=" in header
