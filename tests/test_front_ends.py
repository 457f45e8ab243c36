"""Every front end grades a notebook with the same settings for the same environment: ``pytest grader/``
(the plugin), ``python -m grader`` and ``python -m grader.gradescope run`` build the same ``GradingConfig``
(thread count included), from the one table of settings (grader/settings.py). Nothing is executed."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from grader import __main__ as selfcheck
from grader import cluster, gradescope, machine, plugin, settings
from grader.settings import GradingConfig

# What a front end may set its own way: where its outputs go, what it hides, how it draws.
OWN_FIELDS = {"grades_dir", "cache_dir", "hidden", "draw_processes", "force", "data_dir", "rubric_path", "memory_limit"}

ENVIRONMENTS = [
    {},
    {"GRADER_THREADS": "3"},
    {"GRADER_THREADS": "auto"},
    {"GRADER_THREADS": "cores", "GRADER_SEED": "7", "GRADER_CELL_TIMEOUT": "30", "GRADER_NOTEBOOK_TIMEOUT": "90"},
    {"GRADER_PROFILE": "tiny", "GRADER_SANDBOX": "off", "GRADER_THREADS": "1"},
]


class _PytestConfig:
    """As much of ``pytest.Config`` as the plugin's ``GradingSession`` reads to build its ``GradingConfig``: no option
    given on the command line."""

    def __init__(self, root: Path, workers: int | None = None) -> None:
        self.invocation_params = SimpleNamespace(dir=root)
        if workers is not None:
            self.workerinput = {"workercount": workers}

    def getoption(self, name: str, default: Any = None) -> Any:
        return False if name == "--force" else default


@pytest.fixture
def environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for name in [n for n in os.environ if n.startswith("GRADER_")]:
        monkeypatch.delenv(name)
    env: dict[str, str] = request.param
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submission").mkdir()
    (tmp_path / "hw.ipynb").write_text("{}")
    return env


def plugin_config(root: Path, workers: int | None = None) -> GradingConfig:
    return plugin.GradingSession(_PytestConfig(root, workers)).grading_config  # type: ignore[arg-type]


def selfcheck_config(root: Path, monkeypatch: pytest.MonkeyPatch) -> GradingConfig:
    """What ``python -m grader hw.ipynb`` grades with (its ``run`` replaced: nothing executes)."""
    seen: list[GradingConfig] = []

    def run(args: argparse.Namespace) -> int:
        seen.append(selfcheck.grading_config(args))
        return 0

    monkeypatch.setattr(selfcheck, "run", run)
    assert selfcheck.main([str(root / "hw.ipynb")]) == 0
    return seen[0]


def gradescope_config(root: Path, monkeypatch: pytest.MonkeyPatch) -> GradingConfig:
    """What ``python -m grader.gradescope run --root ROOT`` grades with (nothing executes)."""
    seen: list[GradingConfig] = []

    def run(root: Path, profile: str, cache_dir: Path | None = None, sandbox: str | None = None,
            threads: int | None = None, **values: Any) -> Any:
        seen.append(gradescope.grading_config(root, profile, cache_dir, sandbox, threads, **values))
        return SimpleNamespace(key="submission", score=0, max_score=0, status="graded", checks=[])

    monkeypatch.setattr(gradescope, "run", run)
    monkeypatch.setattr(settings, "check_sandbox", lambda mode, *a, **k: [])  # this machine's sandbox is not the point
    assert gradescope.main(["run", "--root", str(root)]) == 0
    return seen[0]


def shared(config: GradingConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in OWN_FIELDS}


@pytest.mark.parametrize("environment", ENVIRONMENTS, indirect=True, ids=lambda env: " ".join(f"{k}={v}" for k, v in env.items()) or "defaults")
def test_every_front_end_grades_with_the_same_settings_and_thread_count(
    environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_plugin = plugin_config(tmp_path)
    from_selfcheck = selfcheck_config(tmp_path, monkeypatch)
    from_gradescope = gradescope_config(tmp_path, monkeypatch)
    expected = settings.resolve_threads(None, 1)
    assert from_plugin.threads == from_selfcheck.threads == from_gradescope.threads == expected
    assert shared(from_plugin) == shared(from_selfcheck) == shared(from_gradescope)
    # And the values are the table's, read from this environment.
    for name in ("profile", "seed", "cell_timeout", "notebook_timeout", "sandbox"):
        assert getattr(from_plugin, name) == settings.resolve(name, None)


@pytest.mark.parametrize("environment", [{}], indirect=True, ids=["defaults"])
def test_the_default_thread_count_does_not_depend_on_how_many_notebooks_run_at_once(
    environment: dict[str, str], tmp_path: Path
) -> None:
    assert plugin_config(tmp_path, workers=2).threads == plugin_config(tmp_path).threads == machine.available_cores()


@pytest.mark.parametrize("environment", [{"GRADER_THREADS": "3"}, {"GRADER_THREADS": "auto"}], indirect=True, ids=["3", "auto"])
def test_a_dask_worker_reads_its_thread_count_by_the_same_rule(
    environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Grader:  # the worker's Grader, without its data
        def __init__(self, config: GradingConfig) -> None:
            self.config = config
            self.data_dir = tmp_path

    monkeypatch.setattr(cluster, "Grader", Grader)
    spec = cluster.settings_of(GradingConfig(grades_dir=tmp_path, profile="tiny", cell_timeout=60.0, notebook_timeout=300.0))
    import json

    worker = cluster._worker_grader.__wrapped__(json.dumps(spec), str(tmp_path / "base"), 1)  # type: ignore[attr-defined]
    assert worker.config.threads == plugin_config(tmp_path).threads == settings.resolve_threads(None, 1)


def test_each_front_end_takes_its_options_from_the_settings_table() -> None:
    """Flags, help and defaults are the table's; no front end restates them."""
    main_help = selfcheck.build_parser().format_help()
    run_parser = gradescope.build_parser()
    run_help = next(
        action.choices["run"] for action in run_parser._actions if isinstance(action, argparse._SubParsersAction)
    ).format_help()
    for name in selfcheck.MAIN_SETTINGS:
        assert settings.SETTINGS[name].flag in main_help and settings.SETTINGS[name].env in main_help
    for name in (*gradescope.RUN_SETTINGS, "data_cache"):
        assert settings.SETTINGS[name].flag in run_help and settings.SETTINGS[name].env in run_help
    defaults = GradingConfig(grades_dir=Path("g"))
    for name in ("profile", "seed", "cell_timeout", "notebook_timeout", "sandbox"):
        assert getattr(defaults, name) == settings.parsed_default(name)
