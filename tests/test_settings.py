"""Tests of grader/settings.py: every setting parsed and every folder checked before anything runs,
with the same rules and messages in the pytest plugin, ``python -m grader`` and the Gradescope runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grader import settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("cell_timeout", "-5", "must be a number of seconds greater than 0, got '-5'"),
        ("notebook_timeout", "0", "must be a number of seconds greater than 0, got '0'"),
        ("notebook_timeout", "nan", "must be a number of seconds greater than 0"),
        ("notebook_timeout", "soon", "expected a number of seconds, got 'soon'"),
        ("seed", "-1", "must be 0 or more"),
        ("seed", "1.5", "expected an integer"),
        ("memory_limit", "8", "must be at least 512M"),
        ("memory_limit", "lots", "expected a size such as 8G or 512M"),
        ("profile", "huge", "expected smoke, full or tiny, got 'huge'"),
        ("sandbox", "maybe", "expected required or off"),
        ("threads", "0", "expected cores, auto or a positive number"),
        ("grades_dir", " ", "expected a path"),
    ],
)
def test_a_bad_value_names_its_option_and_what_it_takes(name: str, text: str, message: str) -> None:
    flag = settings.SETTINGS[name].flag
    with pytest.raises(settings.UsageError, match=f"^option {flag}: ") as exc:
        settings.resolve(name, text, environ={})
    assert message in str(exc.value)


def test_the_environment_is_used_when_the_option_is_absent_and_named_when_wrong() -> None:
    assert settings.resolve("seed", None, environ={"GRADER_SEED": "7"}) == 7
    assert settings.resolve("seed", "3", environ={"GRADER_SEED": "7"}) == 3
    with pytest.raises(settings.UsageError, match="^environment variable GRADER_CELL_TIMEOUT: "):
        settings.resolve("cell_timeout", None, environ={"GRADER_CELL_TIMEOUT": "abc"})


def test_defaults_parse_and_sizes_accept_the_usual_units() -> None:
    for name in settings.SETTINGS:
        settings.resolve(name, None, environ={})  # every default is a valid value
    assert settings.resolve("memory_limit", "1.5G", environ={}) == int(1.5 * 2**30)
    assert settings.resolve("memory_limit", "512MiB", environ={}) == 512 * 2**20
    assert settings.resolve("sandbox", None, environ={}) == "required"
    assert settings.resolve("sandbox", None, environ={"GRADER_SANDBOX": "OFF"}) == "off"


def test_a_submissions_folder_without_notebooks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(settings.UsageError, match="no such folder"):
        settings.check_submissions(tmp_path / "missing")
    (tmp_path / "file.ipynb").write_text("{}")
    with pytest.raises(settings.UsageError, match="neither a folder nor a zip"):
        settings.check_submissions(tmp_path / "file.ipynb")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(settings.UsageError, match="it is empty"):
        settings.check_submissions(empty)
    (empty / "hw.py").write_text("")
    (empty / "notes.txt").write_text("")
    with pytest.raises(settings.UsageError, match=r"it holds only \.py, \.txt"):
        settings.check_submissions(empty)
    (empty / "alice").mkdir()
    (empty / "alice" / "hw.ipynb").write_text("{}")
    settings.check_submissions(empty)  # one folder down counts


def test_a_grades_dir_that_is_a_file_or_cannot_be_written_is_refused(tmp_path: Path) -> None:
    (tmp_path / "grades.txt").write_text("")
    with pytest.raises(settings.UsageError, match="^--grades-dir: .* is a file, not a folder$"):
        settings.check_writable_dir(tmp_path / "grades.txt", "--grades-dir")
    with pytest.raises(settings.UsageError, match="is a file"):
        settings.check_writable_dir(tmp_path / "grades.txt" / "sub", "--grades-dir")
    settings.check_writable_dir(tmp_path / "new" / "grades", "--grades-dir")
    assert not (tmp_path / "new").exists(), "checking creates nothing"


def test_a_read_only_grades_dir_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    bwrap = subprocess.run(["which", "bwrap"], capture_output=True, text=True).stdout.strip()
    if not bwrap:
        pytest.skip("needs bubblewrap to mount a folder read-only")
    code = (
        "from pathlib import Path; from grader import settings\n"
        "try:\n"
        f"    settings.check_writable_dir(Path({str(ro)!r}), '--grades-dir')\n"
        "except settings.UsageError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [bwrap, "--bind", "/", "/", "--ro-bind", str(ro), str(ro), "--dev", "/dev", "--proc", "/proc",
         sys.executable, "-c", code],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert proc.stdout.startswith("--grades-dir: cannot write in"), proc.stdout + proc.stderr


def test_a_misspelt_check_id_in_the_rubric_is_attributed_to_the_rubric_with_the_nearest_id(tmp_path: Path) -> None:
    text = (ROOT / "grader" / "judging" / "rubric.toml").read_text().replace("cnn.l2_accuracy", "cnn.l2_acuracy")
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(settings.UsageError) as exc:
        settings.check_rubric(tmp_path / "r.toml")
    message = str(exc.value)
    assert message.startswith("--rubric: ") and "'cnn.l2_acuracy' (did you mean 'cnn.l2_accuracy'?)" in message
    with pytest.raises(settings.UsageError, match="^--rubric: no such file"):
        settings.check_rubric(tmp_path / "nope.toml")


def _pytest_grader(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "grader/", "-q", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def one_notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("subs")
    (folder / "alice.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    return folder


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cell-timeout", "-5"], {}, "ERROR: option --cell-timeout: must be a number of seconds greater than 0"),
        (["--notebook-timeout", "0"], {}, "ERROR: option --notebook-timeout: must be a number of seconds greater than 0"),
        (["--seed", "x"], {}, "ERROR: option --seed: expected an integer"),
        ([], {"GRADER_MEMORY_LIMIT": "8"}, "ERROR: environment variable GRADER_MEMORY_LIMIT: must be at least 512M"),
        (["--grades-dir", "README.md"], {}, "ERROR: --grades-dir: "),
        (["--submissions", "EMPTY"], {}, "ERROR: --submissions: no .ipynb notebook in"),
        (["--rubric", "BADRUBRIC"], {}, "ERROR: --rubric: "),
        (["--sandbox", "maybe"], {}, "ERROR: option --sandbox: expected required or off"),
    ],
)
def test_pytest_grader_refuses_a_bad_option_in_a_line_with_a_usage_status(
    tmp_path: Path, one_notebook: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "bad.toml").write_text("[checks.'recap.runz']\npoints = 1\n")
    args = [
        {"EMPTY": str(tmp_path / "empty"), "BADRUBRIC": str(tmp_path / "bad.toml")}.get(a, a) for a in args
    ]
    if "--submissions" not in args:
        args += ["--submissions", str(one_notebook)]
    if "--grades-dir" not in args:
        args += ["--grades-dir", str(tmp_path / "grades")]
    proc = _pytest_grader(tmp_path, *args, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 1), out
    assert message in out, out
    assert "Traceback" not in out and ".py:" not in out, out
    assert len(out.strip().splitlines()) <= 4, out
    assert not (tmp_path / "grades").exists(), "nothing ran"
