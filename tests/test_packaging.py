"""How the grader is installed and launched: the pytest entry point, the console script, the version,
and the Gradescope bundle's scripts as Gradescope runs them (copied out of the source folder).

The scripts are run against stand-ins for Python and bin/setup, so nothing is installed or graded
here; benchmarks/gradescope_e2e.sh runs the real bundle end to end.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import grader
from grader import cli, gradescope, gradescope_bundle

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# --- what pyproject.toml declares -----------------------------------------------------------------


def test_the_pytest_entry_point_names_an_importable_plugin_after_its_module() -> None:
    import importlib

    entry_points = PYPROJECT["project"]["entry-points"]["pytest11"]
    assert list(entry_points.values()) == ["grader.plugin"]
    # Named as its module, so conftest.py's pytest_plugins and `-p grader.plugin` find it registered.
    assert list(entry_points) == ["grader.plugin"]
    plugin = importlib.import_module(entry_points["grader.plugin"])
    assert callable(plugin.pytest_addoption)


def test_the_console_script_points_at_the_cli() -> None:
    module, _, function = PYPROJECT["project"]["scripts"]["l1l2-grader"].partition(":")
    assert (module, function) == ("grader.cli", "main")


def test_the_version_is_declared_once_as_the_packages() -> None:
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "grader.__version__"}


def test_every_data_file_of_the_packages_is_package_data() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "grader", "reference"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = [
        path
        for path in listed
        if not path.endswith(".py")
        and not any(fnmatch.fnmatch(path.partition("/")[2], pattern) for pattern in patterns[path.partition("/")[0]])
    ]
    assert missing == []
    assert "grader/test_grading.py" in listed  # a module of the package: the wheel carries it


def test_every_package_of_the_source_is_listed_for_the_wheel() -> None:
    found = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("grader", "reference")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    )
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == found


# --- --version and the command -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "grader.cli", "--version"],
        ["-m", "grader.gradescope", "--version"],
        ["-m", "grader.cli", "check", "--version"],
        ["-m", "grader.cli", "reference", "--version"],
        ["-m", "grader.cli", "gradescope", "--version"],
    ],
    ids=lambda args: " ".join(args[1:]),
)
def test_version_prints_the_graders_version(args: list[str]) -> None:
    proc = _run(*args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"l1l2-grader {cli.version()}\n", "")


def test_the_version_is_the_installed_distributions_else_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: f"{name} 9.9")
    assert cli.version() == "l1l2-grader 9.9"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == grader.__version__


def test_the_command_without_a_known_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["grades"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'grades' (choose from check, grade, gradescope, reference)" in err


def test_the_command_hands_its_arguments_to_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "no-such-notebook.ipynb"]) == 2
    assert "no such file: no-such-notebook.ipynb" in capsys.readouterr().err


def test_grade_runs_the_grading_tests_of_the_package_from_any_folder(tmp_path: Path) -> None:
    (tmp_path / "subs").mkdir()
    shutil.copy(ROOT / "reference" / "solution.ipynb", tmp_path / "subs" / "alice.ipynb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = _run(
        "-m", "grader.cli", "grade", "--collect-only", "-q", "--profile", "tiny", "--submissions", "subs",
        cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_grading.py::test_check[alice::recap.runs]" in proc.stdout


# --- gradescope run and bundle: refusals ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["missing", "no_submission"])
def test_run_refuses_a_root_without_a_submission_folder(layout: str, tmp_path: Path) -> None:
    root = tmp_path / "autograder"
    if layout == "no_submission":
        root.mkdir()
    proc = _run("-m", "grader.gradescope", "run", "--root", str(root), "--profile", "tiny")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("python -m grader.gradescope run: error: --root")
    assert not (root / "results").exists()


def test_bundle_refuses_the_full_profile(tmp_path: Path) -> None:
    proc = _run("-m", "grader.gradescope", "bundle", str(tmp_path / "a.zip"), "--profile", "full")
    assert proc.returncode == 2
    assert "the full profile needs a CIFAR-10 copy" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "a.zip").exists()


def test_bundle_refuses_an_installed_grader_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site-packages"
    (site / "grader").mkdir(parents=True)
    monkeypatch.setattr(gradescope_bundle, "REPO", site)
    monkeypatch.setattr(gradescope_bundle, "PACKAGE_DIR", site / "grader")
    with pytest.raises(gradescope.UsageError, match=r"installed .* requirements\.lock, bin/setup\); build the bundle in a checkout"):
        gradescope.bundle(tmp_path / "a.zip", "smoke")
    assert not (tmp_path / "a.zip").exists()


def test_the_notebook_is_found_whatever_the_folders_above_it_are_called(tmp_path: Path) -> None:
    folder = tmp_path / ".cache" / "autograder" / "submission"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "hw.ipynb").write_text("{}")
    (folder / ".ipynb_checkpoints" / "hw-checkpoint.ipynb").write_text("{}")
    assert gradescope.find_notebook(folder).path == folder / "hw.ipynb"


# --- the bundle's scripts, run as Gradescope runs them ---------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gradescope.bundle(tmp_path_factory.mktemp("bundle") / "autograder.zip", profile="tiny")


def test_the_scripts_are_executable_at_the_top_of_the_bundle(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as zf:
        for name in ("setup.sh", "run_autograder"):
            info = zf.getinfo(name)
            assert info.create_system == 3
            assert stat.S_IMODE(info.external_attr >> 16) == 0o755
            assert stat.S_ISREG(info.external_attr >> 16)
            assert zf.read(name).startswith(b"#!/usr/bin/env bash\n")
        assert (zf.getinfo("bin/setup").external_attr >> 16) & 0o111
        assert {"grader/cli.py", "grader/gradescope.py", "requirements.lock", "pyproject.toml"} <= set(zf.namelist())


def _unpack(bundle: Path, root: Path) -> Path:
    """Lay the bundle out as Gradescope does: unpacked in ROOT/source, run_autograder copied to ROOT."""
    source = root / "source"
    with zipfile.ZipFile(bundle) as zf:
        for info in zf.infolist():
            zf.extract(info, source)
            (source / info.filename).chmod(stat.S_IMODE(info.external_attr >> 16))
    shutil.copy2(source / "run_autograder", root / "run_autograder")
    (root / "submission").mkdir()
    return source


def _stand_in(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_run_autograder_runs_the_grader_installed_in_source_from_its_copy(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "autograder"
    source = _unpack(bundle, root)
    record = tmp_path / "called"
    _stand_in(
        source / ".venv" / "bin" / "python",
        f'{{ pwd; echo "$GRADER_SANDBOX"; for a in "$@"; do echo "$a"; done; }} > {record}\n',
    )
    env = {"PATH": os.environ["PATH"], "AUTOGRADER_ROOT": str(root)}
    proc = subprocess.run([str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cwd, sandbox, *args = record.read_text().splitlines()
    assert (cwd, sandbox) == (str(source), "off")
    assert args == [
        "-m", "grader.gradescope", "run", "--root", str(root), "--profile", "tiny",
        "--data-cache", str(source / gradescope.DATA_CACHE),
    ]


def test_run_autograder_without_setup_says_so(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "autograder"
    _unpack(bundle, root)
    env = {"PATH": os.environ["PATH"], "AUTOGRADER_ROOT": str(root)}
    proc = subprocess.run([str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stdout == f"run_autograder: no Python at {root}/source/.venv/bin/python: setup.sh did not complete (see the autograder's build output)\n"


def _setup_sandbox(
    bundle: Path, tmp_path: Path, pythons: dict[str, str], apt: dict[str, tuple[str, str]] | None = None
) -> tuple[Path, Path, dict[str, str]]:
    """The bundle unpacked with bin/setup and the venv's python replaced by stand-ins that record how
    they were called, and a PATH holding only ``pythons`` (name -> stand-in body), the tools setup.sh
    uses and, with ``apt`` (package -> (version, stand-in body once installed)), apt-cache and apt-get.
    """
    source = _unpack(bundle, tmp_path / "autograder")
    record = tmp_path / "called"
    _stand_in(
        source / "bin" / "setup",
        f'echo "setup PYTHON=$PYTHON" >> {record}\n'
        f"mkdir -p .venv/bin && printf '#!/bin/sh\\necho \"venv $*\" >> {record}\\n' > .venv/bin/python"
        " && chmod +x .venv/bin/python\n",
    )
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "dirname", "mkdir", "chmod", "grep", "awk", "cp"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(Path(found).resolve())
    for name, body in pythons.items():
        _stand_in(tools / name, body)
    if apt is not None:
        versions = "".join(f'    {name}) echo "  Candidate: {version}" ;;\n' for name, (version, _) in apt.items())
        _stand_in(tools / "apt-cache", f'echo "$2:"\ncase "$2" in\n{versions}    *) echo "  Candidate: (none)" ;;\nesac\n')
        installs = "".join(
            f"        {name}) cp {tools / ('installed-' + name)} {tools / name} ;;\n" for name, (_, body) in apt.items() if body
        )
        for name, (_, body) in apt.items():
            if body:
                _stand_in(tools / f"installed-{name}", body)
        _stand_in(
            tools / "apt-get",
            f'echo "apt-get $*" >> {record}\n'
            f'[ "$1" = install ] || exit 0\nfor pkg in "$@"; do\n    case "$pkg" in\n{installs}    esac\ndone\n',
        )
    return source, record, {"PATH": str(tools)}


USABLE = 'case "$1" in --version) echo "Python 3.x";; esac\nexit 0\n'
UNUSABLE = "exit 1\n"  # too old, too new, or without venv: the probe fails
PRERELEASE = UNUSABLE  # a release candidate fails the probe too
NO_PYTHON = "no Python 3.11 to 3.13 (a final release, with venv) here, and none could be installed with apt; set PYTHON"


def _setup(source: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(source / "setup.sh")], env=env, capture_output=True, text=True, check=False)


def test_setup_sh_takes_the_first_supported_python_and_prepares_the_data(bundle: Path, tmp_path: Path) -> None:
    source, record, env = _setup_sandbox(
        bundle, tmp_path, {"python3.11": UNUSABLE, "python3.12": USABLE, "python3.13": USABLE, "python3": USABLE}
    )
    proc = _setup(source, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tools = env["PATH"]
    assert record.read_text().splitlines() == [
        f"setup PYTHON={tools}/python3.12",
        f"venv -m grader.gradescope prepare --profile tiny --data-cache {source}/{gradescope.DATA_CACHE}",
    ]
    assert f"setup.sh: using {tools}/python3.12 (Python 3.x)" in proc.stdout


def test_setup_sh_takes_the_python_it_is_given(bundle: Path, tmp_path: Path) -> None:
    source, record, env = _setup_sandbox(bundle, tmp_path, {"python3.11": USABLE, "mypython": USABLE})
    env["PYTHON"] = "mypython"
    proc = _setup(source, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert record.read_text().splitlines()[0] == f"setup PYTHON={env['PATH']}/mypython"


def test_setup_sh_installs_a_python_with_apt_when_none_is_usable(bundle: Path, tmp_path: Path) -> None:
    # Ubuntu 22.04's python3 is 3.10; here apt offers a final python3.12 and a pre-release python3.11.
    apt = {
        "python3.11": ("3.11.0~rc1-1~22.04.1", PRERELEASE),
        "python3.11-venv": ("3.11.0~rc1-1~22.04.1", ""),
        "python3.12": ("3.12.3-1", USABLE),
        "python3.12-venv": ("3.12.3-1", ""),
    }
    source, record, env = _setup_sandbox(bundle, tmp_path, {"python3": UNUSABLE, "python3.11": PRERELEASE}, apt)
    proc = _setup(source, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert record.read_text().splitlines()[:3] == [
        "apt-get update -qq",
        "apt-get install -y -qq python3.12 python3.12-venv",
        f"setup PYTHON={env['PATH']}/python3.12",
    ]
    assert "setup.sh: installing python3.12 3.12.3-1 from the image's apt repositories" in proc.stdout


def test_setup_sh_never_takes_a_pre_release(bundle: Path, tmp_path: Path) -> None:
    # Ubuntu 22.04 without the deadsnakes PPA: only its own python3.11, 3.11.0~rc1.
    apt = {"python3.11": ("3.11.0~rc1-1~22.04.1", PRERELEASE), "python3.11-venv": ("3.11.0~rc1-1~22.04.1", "")}
    source, record, env = _setup_sandbox(bundle, tmp_path, {"python3": UNUSABLE, "python3.12": PRERELEASE}, apt)
    proc = _setup(source, env)
    assert proc.returncode == 1
    assert proc.stderr.endswith(f"setup.sh: {NO_PYTHON}\n")
    # On an Ubuntu host the deadsnakes PPA is tried too (and fails here: no add-apt-repository).
    calls = [line for line in record.read_text().splitlines() if "software-properties-common" not in line]
    assert calls == ["apt-get update -qq"]


def test_setup_sh_without_a_supported_python_or_apt_stops_with_the_reason(bundle: Path, tmp_path: Path) -> None:
    source, record, env = _setup_sandbox(bundle, tmp_path, {"python3": UNUSABLE, "python3.11": UNUSABLE})
    proc = _setup(source, env)
    assert proc.returncode == 1
    assert proc.stderr == f"setup.sh: {NO_PYTHON}\n"
    assert not record.exists()


# --- the repo and the entry point together ---------------------------------------------------------


def test_the_plugin_loaded_before_the_repos_conftest_is_registered_once(tmp_path: Path) -> None:
    # What an installed entry point does: register grader.plugin before conftest.py asks for it.
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "alice.ipynb").write_text(
        '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    )
    proc = _run(
        "-m", "pytest", "-p", "grader.plugin", "grader/", "--collect-only", "-q",
        "--submissions", str(tmp_path / "submissions"), "--grades-dir", str(tmp_path / "grades"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already registered" not in proc.stdout + proc.stderr


def test_the_wheel_installed_grades_from_any_folder(tmp_path: Path) -> None:
    """Build the wheel from the checkout's files, install it (without dependencies) into a fresh venv that
    sees this environment's packages, and collect the grading items with ``pytest --pyargs grader``."""
    tree = tmp_path / "tree"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    wheels = tmp_path / "wheels"
    built = _run("-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(tree))
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("l1l2_grader-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"grader/test_grading.py", "grader/cli.py", "grader/data/cifar10-smoke.npz", "reference/baselines/tiny.json"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = _run("-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel))
    assert installed.returncode == 0, installed.stderr
    # Then let the venv see this environment's packages (TensorFlow and the rest) without reinstalling them.
    site = next((venv / "lib").glob("python3*/site-packages"))
    shared = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pip").is_dir())
    (site / "shared.pth").write_text(shared + "\n")

    empty = tmp_path / "elsewhere"
    (empty / "subs").mkdir(parents=True)
    shutil.copy(ROOT / "reference" / "solution.ipynb", empty / "subs" / "alice.ipynb")
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    collected = subprocess.run(
        [str(python), "-m", "pytest", "--pyargs", "grader", "--collect-only", "-q", "--profile", "tiny",
         "--submissions", "subs", "--grades-dir", "grades"],
        cwd=empty, env=env, capture_output=True, text=True, check=False,
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert "test_grading.py::test_check[alice::recap.runs]" in collected.stdout
    assert str(site) in subprocess.run(
        [str(python), "-c", "import grader; print(grader.__file__)"], cwd=empty, capture_output=True, text=True, check=True
    ).stdout

    version = subprocess.run([str(venv / "bin" / "l1l2-grader"), "--version"], capture_output=True, text=True, check=False)
    assert version.stdout == f"l1l2-grader {grader.__version__}\n"
    refused = subprocess.run(
        [str(venv / "bin" / "l1l2-grader"), "gradescope", "bundle", "a.zip"], cwd=empty, env=env, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2 and "build the bundle in a checkout" in refused.stderr

    # In the checkout, with the entry point installed, conftest.py asks for the plugin a second time.
    in_repo = subprocess.run(
        [str(python), "-m", "pytest", "grader/", "--collect-only", "-q", "--profile", "tiny",
         "--submissions", str(empty / "subs"), "--grades-dir", str(tmp_path / "grades")],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )
    assert in_repo.returncode == 0, in_repo.stdout + in_repo.stderr
    assert "test_check[alice::recap.runs]" in in_repo.stdout
