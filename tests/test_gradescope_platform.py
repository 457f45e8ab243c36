"""The Gradescope bundle as the platform really runs it: its limits read and fitted, what a student sees
when checks are hidden, no score for a grader fault or a platform limit, the submission metadata hidden
from the notebook and read for lateness. No notebook runs here: grading itself is replaced where needed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from grader import gradescope
from grader.records import CheckResult, SubmissionResult
from grader.runner.sandbox import ContainerLimits

GiB, MiB = 2**30, 2**20


def result(status: str = "graded", visibility: str = "visible", score: float = 12.0) -> SubmissionResult:
    checks = [
        CheckResult("recap.runs", True, 1.0, 1.0, "The recap cells ran."),
        CheckResult("integrity.no_test_leakage", True, 0.0, 0.0, "No leak.", visibility=visibility),
    ]
    return SubmissionResult(
        key="submission", source="submission/hw.ipynb", status=status, reason="", score=score, max_score=12.0,
        checks=checks, execution_time=1.0, timings={}, grader_version="0", profile="tiny", seed=0,
    )


class FakeLimits(ContainerLimits):
    """Limits with an OOM-kill counter the test moves."""

    kills: list[int]

    def oom_kills(self) -> int | None:
        return self.kills.pop(0) if self.kills else None


def limits(memory: int | None, cpus: float | None = 0.5, kills: list[int] | None = None) -> FakeLimits:
    fake = FakeLimits(memory, cpus, "/fake", "/fake", "v2")
    object.__setattr__(fake, "kills", list(kills or []))
    return fake


def autograder_root(tmp_path: Path) -> Path:
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    (root / "submission" / "hw.ipynb").write_text("{}")
    return root


# ------------------------------------------------------------------------------------------------
# Fitting the run (Gradescope's defaults: 768 MB, half a CPU, 10 minutes; troubleshooting.md)
# ------------------------------------------------------------------------------------------------


def test_gradescopes_default_memory_is_too_little_and_says_what_is_needed() -> None:
    plan = gradescope.fit(limits(768 * MiB), "smoke", budget=600, elapsed=5)

    assert plan.short == "memory"
    assert plan.needed == "at least 2 GB of memory"  # the measured peak of the smoke profile, rounded up


def test_a_container_with_enough_memory_bounds_each_child_below_it() -> None:
    plan = gradescope.fit(limits(3 * GiB), "smoke", budget=600, elapsed=5)

    assert not plan.short and plan.memory_bound
    assert plan.memory_limit == 3 * GiB - gradescope.GRADER_BYTES  # a child alone never takes the grader's share
    assert gradescope.fit(limits(1536 * MiB), "smoke", 600, 5).short == "memory"
    assert not gradescope.fit(limits(1536 * MiB), "tiny", 600, 5).short


def test_without_a_container_limit_the_settings_hold() -> None:
    plan = gradescope.fit(limits(None, None), "smoke", budget=3600, elapsed=0, memory_limit=8 * GiB)

    assert (plan.memory_limit, plan.notebook_timeout, plan.cell_timeout) == (8 * GiB, 1800, 600)
    assert not (plan.short or plan.memory_bound or plan.budget_bound)


def test_the_notebook_deadline_leaves_time_to_start_and_to_write_results() -> None:
    plan = gradescope.fit(limits(6 * GiB), "smoke", budget=600, elapsed=10)

    assert plan.budget_bound
    assert plan.notebook_timeout == 600 - 10 - gradescope.STARTUP_SECONDS - gradescope.REPORT_SECONDS
    assert plan.cell_timeout == plan.notebook_timeout
    assert "time budget 600 s" in plan.describe()


def test_a_budget_too_short_for_any_notebook_is_a_time_shortfall() -> None:
    plan = gradescope.fit(limits(6 * GiB), "smoke", budget=150, elapsed=20)

    assert plan.short == "time" and "timeout above" in plan.needed


# ------------------------------------------------------------------------------------------------
# A platform limit: no score, the setting to raise, never the student's error
# ------------------------------------------------------------------------------------------------


def test_run_under_768_mb_runs_nothing_and_explains_the_setting_without_a_score(tmp_path: Path) -> None:
    root = autograder_root(tmp_path)

    assert gradescope.run(root, "tiny", limits=limits(768 * MiB), time_budget=600) is None

    data = json.loads((root / "results" / "results.json").read_text())
    assert "score" not in data and data["tests"] == []
    assert "not a problem in your code" in data["output"] and "raise Memory" in data["output"]
    assert "memory 768 MB" in data["output"] and "Autograder Settings" in data["output"]
    assert not (root / "results" / "grading" / "students").exists()  # nothing was executed


def grade_as(monkeypatch: pytest.MonkeyPatch, outcome: SubmissionResult, seen: list[Any] | None = None) -> None:
    from grader.grade import Grader

    def fake_grade(self: Grader, sub: Any) -> SubmissionResult:
        if seen is not None:
            seen.append(self.config)
        return outcome

    monkeypatch.setattr(Grader, "grade", fake_grade)


def test_a_timeout_of_a_deadline_shortened_to_the_budget_is_the_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = autograder_root(tmp_path)
    seen: list[Any] = []
    grade_as(monkeypatch, result("timeout", score=0), seen)

    assert gradescope.run(root, "tiny", limits=limits(6 * GiB), time_budget=600) is None

    (config,) = seen
    assert config.notebook_timeout < 600 and config.memory_limit == 6 * GiB - gradescope.GRADER_BYTES
    data = json.loads((root / "results" / "results.json").read_text())
    assert "score" not in data and "ran out of the time" in data["output"] and "autograder timeout" in data["output"]


def test_a_kernel_killed_by_the_containers_oom_killer_is_the_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = autograder_root(tmp_path)
    grade_as(monkeypatch, result("kernel_died", score=0))

    assert gradescope.run(root, "tiny", limits=limits(6 * GiB, kills=[0, 1]), time_budget=3600) is None

    data = json.loads((root / "results" / "results.json").read_text())
    assert "score" not in data and "ran out of the memory" in data["output"] and "1 process(es) killed" in data["output"]


def test_a_graded_run_replaces_the_result_written_in_case_the_container_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = autograder_root(tmp_path)
    written: list[str] = []

    def fake_grade(self: Any, sub: Any) -> SubmissionResult:
        written.append(json.loads((root / "results" / "results.json").read_text())["output"])
        return result()

    from grader.grade import Grader

    monkeypatch.setattr(Grader, "grade", fake_grade)
    monkeypatch.setattr("grader.reports.views.find_evidence", lambda *a: None)

    assert gradescope.run(root, "tiny", limits=limits(6 * GiB, kills=[0, 0]), time_budget=3600) is not None

    assert "stopped before it could finish" in written[0]  # what Gradescope would find had it killed the run
    data = json.loads((root / "results" / "results.json").read_text())
    assert data["score"] == 12.0 and data["output"].startswith("Status: graded. Score 12 / 12.")


def test_a_grader_fault_writes_no_score(tmp_path: Path) -> None:
    data = gradescope.error_results(tmp_path, RuntimeError("boom"))

    assert "score" not in data and data["tests"] == []
    assert "no score was given" in data["output"]
    assert "score" not in json.loads((tmp_path / "results" / "results.json").read_text())


# ------------------------------------------------------------------------------------------------
# Hidden checks and the total (specs.md: "If test cases are hidden, students will not be able to see
# their total score")
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["hidden", "after_published", "after_due_date"])
def test_the_output_prints_no_total_while_a_check_is_hidden(visibility: str) -> None:
    data = gradescope.student_results(result(visibility=visibility), [])

    assert "Score" not in data["output"] and "12" not in data["output"]
    assert "shown only to the course staff" in data["output"]
    assert data["score"] == 12.0  # Gradescope records it, and shows it when it shows the total


def test_the_output_prints_the_total_when_every_check_is_visible() -> None:
    data = gradescope.student_results(result(), [], ["Submitted late: 5 min after the due date."])

    assert data["output"] == "Status: graded. Score 12 / 12. Submitted late: 5 min after the due date."
    assert "extra_data" not in data


# ------------------------------------------------------------------------------------------------
# submission_metadata.json (submission_metadata.md): hidden from the notebook, read for lateness
# ------------------------------------------------------------------------------------------------

METADATA = {
    "id": 123456,
    "created_at": "2026-07-31T23:05:00.000000-07:00",
    "assignment": {"due_date": "2026-07-31T23:00:00.000000-07:00", "late_due_date": None, "title": "L1/L2"},
    "users": [{"email": "s@example.edu", "id": 1, "name": "S"}],
    "previous_submissions": [{"submission_time": "2026-07-30T10:00:00-07:00", "score": 1.0, "results": {"tests": []}}],
}


def test_the_metadata_is_hidden_from_the_notebook(tmp_path: Path) -> None:
    root = autograder_root(tmp_path)
    (root / gradescope.METADATA).write_text(json.dumps(METADATA))
    (root / gradescope.METADATA).chmod(0o644)

    assert gradescope.hide_metadata(root)

    assert (root / gradescope.METADATA).stat().st_mode & 0o077 == 0  # the notebook runs as another user
    config = gradescope.grading_config(root, "tiny")
    assert root / gradescope.METADATA in config.hidden and root / "submission" in config.hidden  # bubblewrap hides both
    assert gradescope.read_metadata(root) == METADATA  # the grader still reads it


def test_run_hides_the_metadata_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = autograder_root(tmp_path)
    (root / gradescope.METADATA).write_text(json.dumps(METADATA))
    (root / gradescope.METADATA).chmod(0o644)
    modes: list[int] = []

    def fake_grade(self: Any, sub: Any) -> SubmissionResult:
        modes.append((root / gradescope.METADATA).stat().st_mode & 0o777)
        return result()

    from grader.grade import Grader

    monkeypatch.setattr(Grader, "grade", fake_grade)
    monkeypatch.setattr("grader.reports.views.find_evidence", lambda *a: None)

    gradescope.run(root, "tiny", limits=limits(None, None), time_budget=3600)

    assert modes == [0o600]
    assert "Submitted late: 5 min after the due date" in json.loads((root / "results" / "results.json").read_text())["output"]


def test_lateness_comes_from_created_at_against_the_due_dates() -> None:
    assert gradescope.lateness(METADATA) == "Submitted late: 5 min after the due date (2026-07-31T23:00:00-07:00)."
    on_time = {**METADATA, "created_at": "2026-07-31T22:00:00-07:00"}
    assert gradescope.lateness(on_time) == ""
    after_late = {
        **METADATA,
        "created_at": "2026-08-02T01:00:00-07:00",
        "assignment": {**METADATA["assignment"], "late_due_date": "2026-08-01T23:00:00-07:00"},
    }
    assert gradescope.lateness(after_late) == (
        "Submitted late: 1 d 2 h after the due date (2026-07-31T23:00:00-07:00), "
        "and after the late due date (2026-08-01T23:00:00-07:00)."
    )
    extended = {**METADATA, "users": [{"assignment": {"due_date": "2026-08-05T23:00:00-07:00"}}]}
    assert gradescope.lateness(extended) == ""  # the student's own (extended) due date
    assert gradescope.lateness(None) == "" and gradescope.lateness({"created_at": "x"}) == ""


def test_the_guard_writes_a_time_result_before_the_platform_clock_ends_the_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "autograder"
    code = (
        "import time, sys; from pathlib import Path; from grader import gradescope as g; "
        f"g.FINAL_SECONDS = 0; g.guard(Path({str(root)!r}), 1.0, time.monotonic()); time.sleep(30); sys.exit(0)"
    )
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ})

    assert proc.returncode == 1 and time.monotonic() - began < 20
    data = json.loads((root / "results" / "results.json").read_text())
    assert "score" not in data and "ran out of the time" in data["output"]
