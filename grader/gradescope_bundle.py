"""The Gradescope autograder bundle, and the preparation its ``setup.sh`` runs when Gradescope builds the image.

``bundle`` writes the zip Gradescope takes: ``setup.sh`` and ``run_autograder`` at the top, the project
(grader, reference, how to install them) beside them; it is built from a checkout of the project only.
``prepare`` (``python -m grader.gradescope prepare``, what ``setup.sh`` calls) writes the served data and
checks the baseline once, at image build, so that grading each submission needs no network
(docs/gradescope.md).
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from grader import settings
from grader.errors import UsageError
from grader.settings import GradingConfig

PACKAGE_DIR = Path(__file__).resolve().parent
REPO = PACKAGE_DIR.parent
# What the bundle carries: the grader, the reference (solution and baselines) and how to install them.
BUNDLED = ("grader", "reference", "bin", "conftest.py", "pyproject.toml", "requirements.lock", "README.md", "docs")
# What setup.sh needs besides the packages: only a checkout of the project has these.
INSTALL_FILES = ("pyproject.toml", "requirements.lock", "bin/setup")
# The profiles whose data the bundle carries (grader/data): every one but the full CIFAR-10.
BUNDLE_PROFILES = tuple(p for p in settings.PROFILES if p != "full")
# The served data, prepared by setup.sh; relative to /autograder/source.
DATA_CACHE = ".data-cache"
ZIP_DATE = (2026, 1, 1, 0, 0, 0)

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (the zip is unpacked in
# /autograder/source). It installs a Python the grader supports, the locked dependencies into
# /autograder/source/.venv (bin/setup) and the data the notebooks are served, so that grading
# itself needs no network. Target image: Gradescope's Ubuntu 22.04 base (docs/gradescope.md).
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

# TensorFlow 2.21 has wheels for CPython 3.11 to 3.13; requirements.lock was compiled for 3.11.
VERSIONS="3.11 3.12 3.13"

# A pre-release will not do: for the pip it comes with, a release candidate matches none of the lock's
# python_full_version markers (3.11.0rc1 is neither below 3.12 nor at or above it): the install fails.
usable() {{  # a supported final release that can create a virtual environment with pip
    "$1" -c 'import sys, ensurepip, venv
sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13) and sys.version_info.releaselevel == "final"))' >/dev/null 2>&1
}}

find_python() {{  # the first usable of $PYTHON, python3.11 .. python3.13, python3
    local candidate
    for candidate in ${{PYTHON:-}} $(printf 'python%s ' $VERSIONS) python3; do
        if command -v "$candidate" >/dev/null 2>&1 && usable "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}}

apt_version() {{  # the version apt would install, empty when there is none
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" {{print $2}}'
}}

apt_python() {{  # install the first python3.X (and its venv module) apt has as a final release
    local v version
    for v in $VERSIONS; do
        version="$(apt_version "python$v")"
        [ -n "$version" ] && [ -n "$(apt_version "python$v-venv")" ] || continue
        case "$version" in *~rc*|*~a[0-9]*|*~b[0-9]*) continue ;; esac
        echo "setup.sh: installing python$v $version from the image's apt repositories"
        apt-get install -y -qq "python$v" "python$v-venv" >/dev/null && return 0
    done
    return 1
}}

deadsnakes_python() {{  # Ubuntu: python3.11 from the deadsnakes PPA
    grep -qi '^ID=ubuntu' /etc/os-release 2>/dev/null || return 1
    echo "setup.sh: installing python3.11 from the deadsnakes PPA"
    if ! {{ apt-get install -y -qq software-properties-common >/dev/null && add-apt-repository -y ppa:deadsnakes/ppa; }}; then
        echo "setup.sh: the deadsnakes PPA could not be added"
        return 1
    fi
    apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv >/dev/null && return 0
    echo "setup.sh: nothing could be installed from the deadsnakes PPA; removing it"
    add-apt-repository -y --remove ppa:deadsnakes/ppa >/dev/null 2>&1 || true
    return 1
}}

install_python() {{
    command -v apt-get >/dev/null 2>&1 && apt-get update -qq || return 1
    # Ubuntu 22.04's own python3.11 is a release candidate (3.11.0~rc1): deadsnakes has the release.
    apt_python || deadsnakes_python
}}

python="$(find_python)" || {{ install_python && python="$(find_python)"; }} || {{
    echo "setup.sh: no Python 3.11 to 3.13 (a final release, with venv) here, and none could be installed with apt; set PYTHON" >&2
    exit 1
}}
echo "setup.sh: using $python ($("$python" --version 2>&1))"
PYTHON="$python" sh bin/setup
echo "setup.sh: installed the locked dependencies into $(pwd)/.venv"
.venv/bin/python -m grader.gradescope prepare --profile {profile} --data-cache "$(pwd)/{data_cache}"
# The notebooks run as an unprivileged user here (no bubblewrap in the container): the reference
# solution and baselines are for the grader (root) only.
chmod -R go-rwx reference
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope copies this file to /autograder/run_autograder and runs that copy once per submission,
# so it finds the grader where setup.sh installed it (/autograder/source), never beside itself.
set -uo pipefail
root="${{AUTOGRADER_ROOT:-/autograder}}"
source_dir="$root/source"
python="${{GRADER_PYTHON:-$source_dir/.venv/bin/python}}"
if [ ! -x "$python" ]; then
    echo "run_autograder: no Python at $python: setup.sh did not complete (see the autograder's build output)"
    exit 1
fi
# Gradescope's container is itself the sandbox, so the grader's own stays off: GRADER_SANDBOX is the
# environment form of the grader's --sandbox option.
export GRADER_SANDBOX=off
# The seconds Gradescope allows one run (its autograder timeout, set on the assignment's settings page;
# the bundle cannot read it): the notebook's deadline is fitted inside it (bundle --time-budget).
export GRADER_TIME_BUDGET="${{GRADER_TIME_BUDGET:-{time_budget}}}"
cd "$source_dir" || exit 1
exec "$python" -m grader.gradescope run --root "$root" --profile {profile} --data-cache "$source_dir/{data_cache}"
"""


def checkout_root() -> Path | None:
    """The project checkout this grader runs from, or None when it is an installed package."""
    return REPO if all((REPO / name).is_file() for name in INSTALL_FILES) else None


def bundle(out: Path, profile: str, time_budget: float | None = None) -> Path:
    """Write the autograder zip: setup.sh and run_autograder at the top, the project beside them.

    Raises ``UsageError`` (with the reason) for a profile Gradescope cannot be given, or when the
    grader is an installed package: the bundle installs the locked dependencies, which only a
    checkout has.
    """
    if profile not in BUNDLE_PROFILES:
        raise UsageError(
            f"--profile {profile}: the bundle serves the data shipped in grader/data ({' or '.join(BUNDLE_PROFILES)}); "
            "the full profile needs a CIFAR-10 copy that the bundle does not carry"
        )
    root = checkout_root()
    if root is None:
        missing = ", ".join(name for name in INSTALL_FILES if not (REPO / name).is_file())
        raise UsageError(
            f"this grader is installed ({PACKAGE_DIR}) without the project files the bundle installs from "
            f"({missing}); build the bundle in a checkout of the project instead"
        )
    if not (root / "reference" / "baselines" / f"{profile}.json").is_file():
        raise UsageError(f"--profile {profile}: no reference baseline at reference/baselines/{profile}.json")
    files = _project_files(root)
    scripts = {
        "setup.sh": SETUP_SH.format(profile=profile, data_cache=DATA_CACHE),
        "run_autograder": RUN_AUTOGRADER.format(
            profile=profile, data_cache=DATA_CACHE,
            time_budget=f"{time_budget if time_budget is not None else settings.parsed_default('time_budget'):g}",
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in scripts.items():
            zf.writestr(_zip_info(name, 0o755), text)
        for name in files:
            mode = (root / name).stat().st_mode & 0o777
            zf.writestr(_zip_info(name, mode), (root / name).read_bytes())
    return out


def _zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.create_system = 3  # Unix: unzip then restores the modes in external_attr
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _project_files(root: Path) -> list[str]:
    """The files to bundle: in a git checkout, those git tracks or would track (nothing it ignores), else a walk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *BUNDLED],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode().split("\0")
        return sorted({f for f in listed if f and (root / f).is_file()})
    except (OSError, subprocess.CalledProcessError):
        out = []
        for top in BUNDLED:
            path = root / top
            candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
            out += [
                str(p.relative_to(root))
                for p in candidates
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".tmp"))
            ]
        return out


def prepare(profile: str, data_cache: Path) -> Path:
    """What grading needs that can be made once, at image build: the served data and the font cache.

    Also derives the grading bounds, so that a baseline that does not fit the data fails the build
    instead of every submission. Returns the data folder.
    """
    from grader.grade import Grader

    grader = Grader(GradingConfig(grades_dir=data_cache, profile=profile, cache_dir=data_cache))
    folder = grader.data_dir
    _ = grader.bounds
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (builds matplotlib's font cache)

    return folder
