"""The grading tests that ``pytest grader/`` collects: one item per (submission, check).

A failed item is a check the student did not pass; its message is the feedback the student gets.
"""

from __future__ import annotations

import pytest

from grader.judging.checks import CHECK_IDS
from grader.plugin import check_baseline, graded, submissions_of, take_progress


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "check" not in metafunc.fixturenames:
        return
    check_baseline(metafunc.config)
    params = [
        pytest.param(sub.key, cid, id=f"{sub.key}::{cid}")
        for sub in submissions_of(metafunc.config)
        for cid in CHECK_IDS
    ]
    metafunc.parametrize(("submission", "check"), params)


def test_check(submission: str, check: str, request: pytest.FixtureRequest) -> None:
    result = graded(request.config, submission)
    line = take_progress(request.config)
    if line:
        request.node.user_properties.append(("grading", line))
    verdict = next(c for c in result.checks if c.id == check)
    points = f"[{verdict.score:g}/{verdict.max_score:g} points]"
    if not verdict.passed:
        note = f" [instructor: {verdict.instructor_note}]" if verdict.instructor_note else ""
        pytest.fail(f"{points} {verdict.message}{note}", pytrace=False)
