"""The grader fails closed: without the whole sandbox it executes nothing unless told ``--sandbox off``,
and then the run is labelled unsandboxed everywhere an instructor looks. The run's own outputs
(``gradebook.csv``, ``index.html``) survive submissions named like them, and are written with one mode."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ["--profile", "tiny", "--cell-timeout", "30", "--notebook-timeout", "120", "-q", "-p", "no:randomly"]
KEYS = ("gradebook.csv", "index.html", "plain", "probe")
PLANTED = ROOT / "grader" / "planted-by-a-notebook.txt"
PROBE = f"""
import os
print("UID", os.getuid())
try:
    open({str(PLANTED)!r}, "w").write("x")
    print("WROTE the grader")
except OSError as exc:
    print("REFUSED", type(exc).__name__)
"""


def _notebook(path: Path, source: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("class")
    for key in KEYS:
        _notebook(folder / f"{key}.ipynb", PROBE if key == "probe" else "print('hello')")
    return folder


def _without_bubblewrap(tmp: Path) -> dict[str, str]:
    """An environment whose PATH has every program of this one's but bubblewrap."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for program in Path(folder).iterdir():
            target = bin_dir / program.name
            if program.name != "bwrap" and not target.exists():
                target.symlink_to(program)
    return {**os.environ, "PATH": str(bin_dir)}


def _grade(
    class_folder: Path, grades: Path, env: dict[str, str], *extra: str, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "pytest", "grader/", "--submissions", str(class_folder), "--grades-dir", str(grades),
         "--data-cache", str(grades.parent / "cache"), *OPTIONS, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_without_bubblewrap_nothing_runs_and_the_message_names_it(class_folder: Path, tmp_path: Path) -> None:
    proc = _grade(class_folder, tmp_path / "grades", _without_bubblewrap(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 1), out
    assert "bubblewrap" in out and "--sandbox off" in out, out
    assert "Traceback" not in out, out
    assert not (tmp_path / "grades").exists(), "nothing was executed or written"


def test_without_writable_cgroups_nothing_runs_and_the_message_names_the_limits(
    class_folder: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "GRADER_CGROUP_ROOT": str(tmp_path / "no-cgroups")}
    proc = _grade(class_folder, tmp_path / "grades", env)
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 1), out
    assert "memory limit" in out and "process limit" in out, out
    assert not (tmp_path / "grades").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
def test_setup_without_root_or_bubblewrap_says_what_to_install_and_how_to_opt_out(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / ".l1l2-grader-lock").is_file():
        pytest.skip("needs the set-up .venv")
    env = _without_bubblewrap(tmp_path)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", str(ROOT / "bin" / "setup")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert "apt-get install bubblewrap" in proc.stderr and "--sandbox off" in proc.stderr, proc.stderr


def test_the_self_check_and_the_gradescope_runner_refuse_too(class_folder: Path, tmp_path: Path) -> None:
    env = _without_bubblewrap(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "grader", str(class_folder / "plain.ipynb"), "--profile", "tiny",
         "--grades-dir", str(tmp_path / "self")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "bubblewrap" in proc.stderr and "--sandbox off" in proc.stderr, proc.stderr
    assert not (tmp_path / "self").exists()
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    (root / "submission" / "plain.ipynb").write_bytes((class_folder / "plain.ipynb").read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "grader.gradescope", "run", "--root", str(root), "--profile", "tiny"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "bubblewrap" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (root / "results").exists()


def _python_open_to_others(base: Path) -> str | None:
    """This environment's packages behind an interpreter every user can run (a venv of the system's
    Python of the same version), so that a root grader without bubblewrap can drop privileges; None
    where this machine has no such Python."""
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.is_file():
        return None
    venv = base / "venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    (Path(site) / "grader-shared.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{ROOT}\n")
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def unsandboxed_run(class_folder: Path) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    # In a folder every user can reach: dropped to an unprivileged user, the notebooks still reach their job dirs.
    base = Path(tempfile.mkdtemp(prefix="grader-unsandboxed-"))
    base.chmod(0o755)
    try:
        python = (_python_open_to_others(base) if os.geteuid() == 0 else None) or sys.executable
        grades = base / "grades"
        proc = _grade(class_folder, grades, _without_bubblewrap(base), "--sandbox", "off", python=python)
        yield proc, grades
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_with_sandbox_off_the_class_is_graded_and_labelled_unsandboxed(
    unsandboxed_run: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    proc, grades = unsandboxed_run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # the notebooks train nothing: checks fail, nothing else does
    assert "UNSANDBOXED" in out and "bubblewrap" in out, out
    for key in KEYS:
        record = json.loads((grades / "students" / key / "results.json").read_text())["extra_data"]["submission"]
        assert record["status"] == "graded" and any("bubblewrap" in m for m in record["unsandboxed"]), record
    index = (grades / "index.html").read_text()
    assert 'id="unsandboxed"' in index and "bubblewrap" in index


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped where the grader runs as root")
def test_unsandboxed_as_root_the_notebook_runs_unprivileged_and_cannot_write_the_grader(
    unsandboxed_run: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    _, grades = unsandboxed_run
    if not Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}").is_file():
        pytest.skip("no interpreter an unprivileged user can run")
    executed = (grades / "students" / "probe" / "executed.ipynb").read_text()
    assert "UID 65534" in executed and "REFUSED PermissionError" in executed, executed[-2000:]
    assert not PLANTED.exists()


def test_submissions_named_like_the_run_outputs_are_graded_beside_the_others(
    unsandboxed_run: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    proc, grades = unsandboxed_run
    assert (grades / "gradebook.csv").is_file() and (grades / "index.html").is_file(), proc.stdout[-2000:]
    with open(grades / "gradebook.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["submission"] for r in rows) == sorted(KEYS)
    assert not list(grades.rglob("*.tmp")), "no temporary file is left behind"
    index = (grades / "index.html").read_text()
    for key in KEYS:
        assert f'href="students/{key}/feedback.html"' in index


def test_every_output_is_written_with_one_shared_mode(unsandboxed_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, grades = unsandboxed_run
    outputs = [grades / "gradebook.csv", grades / "index.html"]
    for key in KEYS:
        outputs += [grades / "students" / key / name for name in ("results.json", "executed.ipynb", "feedback.html")]
    modes = {str(p.relative_to(grades)): oct(stat.S_IMODE(p.stat().st_mode)) for p in outputs}
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_an_installed_grader_keeps_the_reference_hidden_from_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed, the grader's parent folder is site-packages, which the sandbox binds back whole."""
    from grader.runner import sandbox
    from grader.runner.sandbox import bubblewrap

    site = tmp_path / "site-packages"
    (site / "reference" / "baselines").mkdir(parents=True)
    (site / "reference" / "baselines" / "smoke.json").write_text("{}")
    (site / "other_package").mkdir()
    job = tmp_path / "job"
    job.mkdir()
    monkeypatch.setattr(bubblewrap, "_REPO_ROOT", site)
    monkeypatch.setattr(bubblewrap, "_code_paths", lambda: [site])  # what it binds back: site-packages
    command = sandbox.wrap(["/bin/ls", "-A", str(site), str(site / "reference")], sandbox.Isolation(job_dir=job))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "other_package" in proc.stdout, "the rest of site-packages is there"
    assert "smoke.json" not in proc.stdout and "baselines" not in proc.stdout, proc.stdout


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_a_folder_hidden_inside_the_job_dir_stays_hidden_from_the_runner(tmp_path: Path) -> None:
    """The evaluator's requests, answers and inputs lie in the job dir the runner writes: the kernel
    must neither read nor forge them."""
    from grader.runner import sandbox

    job = tmp_path / "job"
    (job / "eval" / "results").mkdir(parents=True)
    (job / "eval" / "results" / "0001.json").write_text("{}")
    (job / "eval-inputs").mkdir()
    (job / "eval-inputs" / "x_test.npy").write_text("")
    isolation = sandbox.Isolation(job_dir=job, hidden=(job / "eval", job / "eval-inputs"))
    script = (
        f"ls -A {job}; echo ---; ls -A {job / 'eval'} {job / 'eval-inputs'}; "
        f"echo forged > {job / 'eval' / 'forged.json'}; echo written > {job / 'mine.txt'}"
    )
    proc = subprocess.run(sandbox.wrap(["/bin/sh", "-c", script], isolation), capture_output=True, text=True, timeout=60)
    listing, _, inside = proc.stdout.partition("---")
    assert "eval" in listing and "0001.json" not in inside and "x_test.npy" not in inside, proc.stdout
    assert not (job / "eval" / "forged.json").exists(), "a write there lands in the sandbox's own tmpfs"
    assert (job / "mine.txt").read_text() == "written\n", "the rest of the job dir is the runner's"
