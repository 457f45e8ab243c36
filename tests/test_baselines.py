"""Reference baselines name the data they were measured on, and the grader applies them to that data only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grader.datasets import DatasetStore
from grader.grade import Grader
from grader.settings import GradingConfig

BASELINES = Path(__file__).resolve().parent.parent / "reference" / "baselines"


@pytest.mark.parametrize("profile", ["smoke", "tiny"])
def test_each_shipped_baseline_names_the_shipped_data_it_was_measured_on(profile: str, tmp_path: Path) -> None:
    baseline = json.loads((BASELINES / f"{profile}.json").read_text())
    assert baseline["data"] == DatasetStore(profile, tmp_path).sources


def test_the_full_baseline_names_its_cifar10_copy() -> None:
    data = json.loads((BASELINES / "full.json").read_text())["data"]
    assert data["cifar10"]["kind"] in ("official-archive", "batches-dir", "jpeg-archive")
    assert len(data["cifar10"]["sha256"]) == 64 and len(data["boston_csv_sha256"]) == 64


def _grader_with(tmp_path: Path, edit: dict[str, object] | None, drop_data: bool = False) -> Grader:
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    shutil.copyfile(BASELINES / "tiny.json", baselines / "tiny.json")
    baseline = json.loads((baselines / "tiny.json").read_text())
    if drop_data:
        del baseline["data"]
    if edit:
        baseline["data"] = {**baseline["data"], **edit}
    (baselines / "tiny.json").write_text(json.dumps(baseline))
    return Grader(GradingConfig(grades_dir=tmp_path / "grades", profile="tiny", baselines_dir=baselines))


def test_a_baseline_measured_on_other_data_stops_grading_and_says_how_to_make_one(tmp_path: Path) -> None:
    grader = _grader_with(tmp_path, {"cifar10": {"kind": "jpeg-archive", "sha256": "ab" * 32}})
    with pytest.raises(ValueError, match="measured on other data") as caught:
        _ = grader.bounds
    message = str(caught.value)
    assert "jpeg-archive with sha256 abababababab" in message and "smoke-npz" in message
    assert "python -m reference baseline --profile tiny" in message


def test_a_baseline_measured_on_the_same_data_gives_bounds(tmp_path: Path) -> None:
    assert _grader_with(tmp_path, None).bounds.cnn_accuracy_min["l1"] > 0


def test_a_baseline_that_does_not_name_its_data_is_still_used(tmp_path: Path) -> None:
    # Baselines written before they recorded their data: the grader cannot tell, and does not refuse them.
    assert _grader_with(tmp_path, None, drop_data=True).bounds.cnn_accuracy_min["l1"] > 0
