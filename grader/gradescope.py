"""Run the grader as a Gradescope autograder, and build the bundle Gradescope takes.

    python -m grader.gradescope bundle autograder.zip [--profile smoke]
    python -m grader.gradescope run [--root /autograder]        # what the bundle's run_autograder calls

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once when the image is
built, then ``run_autograder`` for each submission: the student's files are in
``/autograder/submission`` and the results go to ``/autograder/results/results.json``. The same
``run`` command grades one submission folder on any batch system (``--root`` names the folder that
holds ``submission/`` and receives ``results/``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from grader import feedback, report
from grader.grade import Grader, GradingConfig
from grader.records import SubmissionResult, write_json_atomic
from grader.submissions import Submission

REPO = Path(__file__).resolve().parent.parent
# What the bundle carries: the grader, the reference (solution and baselines) and how to install them.
BUNDLED = ("grader", "reference", "bin", "conftest.py", "pyproject.toml", "requirements.lock", "README.md", "docs")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image.
set -euo pipefail
cd /autograder/source
apt-get update -q && apt-get install -y -q bubblewrap python3-venv python3-pip >/dev/null
bin/setup
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
PY="${{GRADER_PYTHON:-$here/.venv/bin/python}}"
exec "$PY" -m grader.gradescope run --root "${{AUTOGRADER_ROOT:-/autograder}}" --profile {profile}
"""


def bundle(out: Path, profile: str) -> Path:
    """Write the autograder zip: setup.sh and run_autograder at the top, the project beside them."""
    files = _project_files()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in (("setup.sh", SETUP_SH), ("run_autograder", RUN_AUTOGRADER.format(profile=profile))):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            zf.writestr(info, text)
        for name in files:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            mode = (REPO / name).stat().st_mode & 0o777
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, (REPO / name).read_bytes())
    return out


def _project_files() -> list[str]:
    """The files to bundle: git's list in a checkout (nothing untracked or ignored), else a walk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", *BUNDLED], cwd=REPO, capture_output=True, check=True
        ).stdout.decode().split("\0")
        return [f for f in listed if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        out = []
        for top in BUNDLED:
            path = REPO / top
            candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
            out += [
                str(p.relative_to(REPO))
                for p in candidates
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".tmp"))
            ]
        return out


def find_notebook(folder: Path) -> Submission:
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if not any(part.startswith(".") for part in p.parts))
    if len(notebooks) == 1:
        return Submission("submission", notebooks[0])
    if not notebooks:
        return Submission("submission", None, "no .ipynb notebook was uploaded")
    names = ", ".join(str(p.relative_to(folder)) for p in notebooks)
    return Submission("submission", None, f"several notebooks were uploaded ({names}); upload one")


def run(root: Path, profile: str) -> SubmissionResult:
    """Grade ``root/submission`` and write ``root/results/results.json`` (Gradescope's contract)."""
    results_dir = root / "results"
    work = results_dir / "grading"
    grader = Grader(GradingConfig(grades_dir=work, profile=profile, hidden=(root / "submission",)))
    sub = find_notebook(root / "submission")
    result = grader.grade(sub)
    evidence = feedback.find_evidence(work, result)
    data = report.gradescope_results(result, feedback.leaderboard(result, evidence))
    data.pop("extra_data", None)  # Gradescope shows only its own keys; the full record stays in grading/
    write_json_atomic(results_dir / "results.json", data)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.gradescope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="write the Gradescope autograder zip")
    b.add_argument("out", type=Path)
    b.add_argument("--profile", default="smoke", choices=["smoke", "full", "tiny"])
    r = sub.add_parser("run", help="grade ROOT/submission into ROOT/results/results.json")
    r.add_argument("--root", type=Path, default=Path("/autograder"))
    r.add_argument("--profile", default="smoke", choices=["smoke", "full", "tiny"])
    args = parser.parse_args(argv)
    if args.command == "bundle":
        out = bundle(args.out, args.profile)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); upload it as the autograder of the assignment")
        return 0
    result = run(args.root, args.profile)
    print(f"{result.key}: {result.score:g} / {result.max_score:g} ({result.status})")
    for c in result.checks:
        print(f"  {'PASS' if c.passed else 'FAIL'} {c.id}: {c.message}")
    return 0 if result.status != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
