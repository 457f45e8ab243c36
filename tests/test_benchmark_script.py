"""The grading benchmark's arithmetic and report (benchmarks/grading.py), from given timings; nothing is timed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from grader.judging import checks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grading_benchmark", ROOT / "benchmarks" / "grading.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _run(bench: ModuleType, label: str, wall: float, cpu: float) -> object:
    return bench.Run(label, ["true"], wall, cpu, 0, "log")


def test_single_notebook_ratios_are_against_plain_nbclient_and_nbgrader(bench: ModuleType) -> None:
    single = {
        "plain nbclient": _run(bench, "plain nbclient", 50.0, 80.0),
        "nbgrader autograde": _run(bench, "nbgrader autograde", 55.0, 90.0),
        "pytest grader/": _run(bench, "pytest grader/", 60.0, 100.0),
    }
    summary = bench.summarize(single, {"pytest grader/": {"cells": 40.0}}, {}, {}, None, 2)
    assert summary["single"]["plain nbclient"]["wall_vs_plain"] == pytest.approx(1.0)
    assert summary["single"]["pytest grader/"]["wall_vs_plain"] == pytest.approx(1.2)
    assert summary["single"]["pytest grader/"]["cpu_vs_plain"] == pytest.approx(1.25)
    assert summary["single"]["pytest grader/"]["wall_vs_nbgrader"] == pytest.approx(60 / 55)
    assert summary["single"]["nbgrader autograde"]["wall_vs_plain"] == pytest.approx(1.1)
    assert summary["batch"] == {} and summary["regrade"] is None
    report = bench.format_report(summary)
    assert "1.20x" in report and "1.09x" in report and "cells 40.0 s" in report


def test_batch_speedup_kernel_cpu_per_core_and_regrade(bench: ModuleType) -> None:
    batch = {
        "-n 1": _run(bench, "-n 1", 100.0, 190.0),
        "-n 2": _run(bench, "-n 2", 80.0, 180.0),
    }
    kernel_cpu = {"-n 1": 150.0, "-n 2": 140.0}
    regrade = _run(bench, "regrade", 10.0, 8.0)
    threads = {"-n 1": {"workers": 1, "threads_per_kernel": 2}, "-n 2": {"workers": 2, "threads_per_kernel": 1}}
    summary = bench.summarize({}, {}, batch, kernel_cpu, regrade, 2, threads)
    n2 = summary["batch"]["-n 2"]
    assert (n2["workers"], n2["threads_per_kernel"]) == (2, 1)
    assert n2["speedup_vs_n1"] == pytest.approx(1.25)
    assert n2["kernel_cpu_per_core"] == pytest.approx(70.0)
    assert n2["wall_vs_kernel_cpu_per_core"] == pytest.approx(80 / 70)
    assert n2["wall_vs_all_cpu_per_core"] == pytest.approx(80 / 90)
    assert summary["batch"]["-n 1"]["speedup_vs_n1"] == pytest.approx(1.0)
    assert summary["regrade"] == {"wall": 10.0, "scratch_wall": 100.0, "regrade_vs_scratch": pytest.approx(0.1)}
    report = bench.format_report(summary)
    assert "1.25x" in report and "0.10x" in report and "2x1t" in report and "1x2t" in report


def test_missing_kernel_cpu_gives_no_ratio_rather_than_a_wrong_one(bench: ModuleType) -> None:
    summary = bench.summarize({}, {}, {"-n 2": _run(bench, "-n 2", 80.0, 0.0)}, {}, None, 2)
    row = summary["batch"]["-n 2"]
    assert row["kernel_cpu"] is None and row["wall_vs_kernel_cpu_per_core"] is None
    assert row["speedup_vs_n1"] is None
    assert "-n 2" in bench.format_report(summary)


def test_the_edited_rubric_changes_points_only(bench: ModuleType, tmp_path: Path) -> None:
    original = checks.load_rubric(checks.RUBRIC_PATH)
    edited = checks.load_rubric(bench.edited_rubric(checks.RUBRIC_PATH, tmp_path / "rubric.toml"))
    assert edited.max_score == original.max_score + 1
    assert edited.settings == original.settings
    changed = [cid for cid in checks.CHECK_IDS if edited.checks[cid].points != original.checks[cid].points]
    assert len(changed) == 1


def test_metric_spread_finds_the_largest_difference_between_configurations(bench: ModuleType) -> None:
    metrics = {
        "-n 1": {"a cnn.l1_accuracy": 0.40, "a recap.l1_mse": 50.0},
        "-n 2": {"a cnn.l1_accuracy": 0.41, "a recap.l1_mse": 50.0},
    }
    spread = bench.metric_spread(metrics)
    assert spread["compared"] == 2 and spread["where"] == "a cnn.l1_accuracy"
    assert spread["max_abs_difference"] == pytest.approx(0.01)
    assert bench.metric_spread({"-n 1": {"x": 1.0}, "-n 2": {"x": 1.0}})["where"] == ""


def test_rounds_are_compared_within_each_round_and_summarised_by_their_median(bench: ModuleType) -> None:
    rounds = [
        {"plain nbclient": {"wall": 50.0}, "nbgrader autograde": {"wall": 55.0}, "pytest grader/": {"wall": 52.0}},
        {"plain nbclient": {"wall": 80.0}, "nbgrader autograde": {"wall": 60.0}, "pytest grader/": {"wall": 56.0}},
        {"plain nbclient": {"wall": 52.0}, "nbgrader autograde": {"wall": 53.0}, "pytest grader/": {"wall": 78.0}},
    ]
    ratios = bench.round_ratios(rounds)

    assert ratios["pytest grader/ / plain nbclient"] == pytest.approx([1.04, 0.7, 1.5])
    assert ratios["pytest grader/ / nbgrader autograde"] == pytest.approx([52 / 55, 56 / 60, 78 / 53])
    text = bench.format_rounds(rounds)
    assert "round 2: plain nbclient 80.0 s" in text
    assert "pytest grader/ / plain nbclient: 1.04x 0.70x 1.50x; median 1.04x" in text


def test_each_batch_configuration_reports_its_workers_and_threads(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "xdist_auto_workers", lambda: 2)

    threads = bench.threads_by_config(2)

    assert threads["-n 1"] == {"workers": 1, "threads_per_kernel": 2}
    assert threads["-n 2"] == {"workers": 2, "threads_per_kernel": 1}
    assert threads["-n auto"] == {"workers": 2, "threads_per_kernel": 1}
    assert threads["-n auto, threads cores"] == {"workers": 2, "threads_per_kernel": 2}
    assert threads[bench.PLAIN_BATCH] == {"workers": 2, "threads_per_kernel": 2}


def test_the_plain_batch_is_a_floor_with_no_speedup_against_the_grader(bench: ModuleType) -> None:
    batch = {"-n 1": _run(bench, "-n 1", 100.0, 190.0), bench.PLAIN_BATCH: _run(bench, bench.PLAIN_BATCH, 60.0, 100.0)}
    summary = bench.summarize({}, {}, batch, {"-n 1": 150.0, bench.PLAIN_BATCH: 96.0}, None, 2)
    plain = summary["batch"][bench.PLAIN_BATCH]
    assert plain["speedup_vs_n1"] is None
    assert plain["wall_vs_kernel_cpu_per_core"] == pytest.approx(60 / 48)
    assert bench.PLAIN_BATCH in bench.format_report(summary)


def test_each_profile_is_graded_with_its_own_data_and_cache(bench: ModuleType, tmp_path: Path) -> None:
    smoke = bench.Data("smoke", None, tmp_path / "cache", tmp_path / "served-smoke")
    full = bench.Data("full", tmp_path / "cifar", tmp_path / "cache", tmp_path / "served-full")
    smoke_cmd = bench.grade_command(smoke, 600.0, tmp_path / "subs", tmp_path / "grades", "-n", "2")
    full_cmd = bench.grade_command(full, 900.0, tmp_path / "subs", tmp_path / "grades")
    assert smoke_cmd[smoke_cmd.index("--profile") + 1] == "smoke" and "--data-dir" not in smoke_cmd
    assert smoke_cmd[-2:] == ["-n", "2"]
    assert full_cmd[full_cmd.index("--profile") + 1] == "full"
    assert full_cmd[full_cmd.index("--data-dir") + 1] == str(tmp_path / "cifar")
    assert full_cmd[full_cmd.index("--cell-timeout") + 1] == "900"
    assert full_cmd[full_cmd.index("--data-cache") + 1] == str(tmp_path / "cache")


def test_the_full_profile_is_asked_for_with_its_data_and_rounds(bench: ModuleType, tmp_path: Path) -> None:
    args = bench.parse_args(["--parts", "single", "--full-data-dir", str(tmp_path), "--full-repeat", "2"])
    assert args.full_data_dir == tmp_path.resolve() and args.full_repeat == 2
    assert bench.parse_args([]).full_data_dir is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--full-repeat", "0"])


def test_run_plain_executes_several_notebooks_at_a_time_each_with_its_timings(tmp_path: Path) -> None:
    import json
    import subprocess

    import nbformat

    notebooks = []
    for name in ("a", "b", "c"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"print({name!r} * 2)")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
        notebooks.append(str(tmp_path / f"{name}.ipynb"))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_plain.py"), "--parallel", "2", str(out), "60", *notebooks],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("a", "b", "c"):
        executed = nbformat.read(str(out / f"{name}.executed.ipynb"), as_version=4)
        assert executed.cells[0].outputs[0]["text"].strip() == name * 2
        assert json.loads((out / f"{name}.timings.json").read_text())["kernel_cpu"] > 0
        assert (out / f"home-{name}").is_dir()
