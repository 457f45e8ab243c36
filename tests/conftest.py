"""Fixtures shared by several test modules (plain builders are in ``tests/builders.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
