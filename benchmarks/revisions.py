"""Per-notebook cost of this checkout against an earlier revision: the same notebook, graded in turn.

    .venv/bin/python benchmarks/revisions.py --base afdcaa8 --rounds 3

The earlier revision is exported with ``git archive`` into a temporary folder; both sides are graded
with ``python -m grader NOTEBOOK`` run from their own folder (so each imports its own ``grader``
package) with the same interpreter, data profile and seed, each round into a fresh grades dir so
nothing is reused from a cache. Rounds alternate base, this checkout, base, ... so that a slow spell
of the machine falls on both. Printed: every round's wall time, each side's median, and the ratio of
the medians (this checkout / base); the record goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grader import settings  # noqa: E402 - after the repository is on the path


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def grade_once(side: Path, notebook: Path, profile: str, grades: Path) -> dict[str, float]:
    """Grade ``notebook`` with the grader in ``side``; wall seconds and the phases it recorded."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "grader", str(notebook), "--profile", profile, "--grades-dir", str(grades)],
        cwd=side,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"grading with {side} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, float] = {"wall": wall}
    results = list(grades.glob("students/*/results.json"))
    if results:
        data = json.loads(results[0].read_text())
        out["score"] = float(data.get("score", 0.0))
        timings = (data.get("extra_data") or {}).get("timings") or {}
        out.update({k: float(v) for k, v in timings.items() if isinstance(v, (int, float))})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--notebook", type=Path, default=ROOT / "submissions" / "solution.ipynb")
    parser.add_argument("--profile", default=settings.SETTINGS["profile"].default, choices=settings.PROFILES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "grader"], capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="grader-revisions-"))
    try:
        base = export(args.base, work / "base")
        sides = {"base": base, "head": ROOT}
        rounds: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for r in range(args.rounds):
            for name, side in sides.items():
                result = grade_once(side, args.notebook.resolve(), args.profile, work / f"grades-{name}-{r}")
                rounds[name].append(result)
                print(f"round {r + 1} {name:4s} {result['wall']:7.1f} s  score {result.get('score', float('nan')):g}", flush=True)
        medians = {name: statistics.median(x["wall"] for x in rs) for name, rs in rounds.items()}
        ratio = medians["head"] / medians["base"]
        print(f"median base {medians['base']:.1f} s, head {medians['head']:.1f} s: head / base = {ratio:.3f}")
        record = {
            "command": " ".join([Path(sys.executable).name, "benchmarks/revisions.py", *(argv if argv is not None else sys.argv[1:])]),
            "base": args.base,
            "head": head + ("+dirty" if dirty else ""),
            "notebook": str(args.notebook),
            "profile": args.profile,
            "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rounds": rounds,
            "median_wall": medians,
            "ratio": ratio,
        }
        out = args.out or ROOT / "benchmarks" / "results" / f"revisions-{args.base}-{head}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"record: {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
