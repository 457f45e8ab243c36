"""Reference baselines: run the instructor's solution notebook over several seeds and store the metrics.

    python -m reference baseline --profile smoke --seeds 10
    python -m reference check --profile smoke            # rerun the grading seed, compare with the baseline
    python -m reference calibrate --profile smoke        # grade the labelled corpora, measure each check's error rates

The solution is graded by the same machinery as students (execute, evaluate, identify models), so a
baseline measures exactly what the checks later compare against.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from grader import settings
from grader.datasets import DatasetStore
from grader.grade import Grader
from grader.judging import checks
from grader.machine import machine, versions
from grader.outputs import JOBS
from grader.records import Evidence, write_json_atomic
from grader.settings import GradingConfig

HERE = Path(__file__).resolve().parent
SOLUTION = HERE / "solution.ipynb"
BASELINES = HERE / "baselines"


def metrics_of(ev: Evidence) -> dict[str, float]:
    """The reference metrics of one run, keyed as in the baseline file."""
    out: dict[str, float] = {}
    for part, models in (("recap", checks.recap_models(ev)), ("cnn", checks.cnn_models(ev))):
        for kind in ("l1", "l2"):
            m = checks.pick(models, kind)
            if m is None:
                raise RuntimeError(f"the reference run has no {part} {kind} model: {ev.reason or ev.status}")
            if m.metric is None:
                raise RuntimeError(f"the reference {part} {kind} model could not be scored: {m.metric_error}")
            out[f"{part}.{kind}_{'mse' if part == 'recap' else 'accuracy'}"] = m.metric
            out[f"{part}.{kind}_train_seconds"] = m.train_seconds
            assert m.facts is not None
            for thr, frac in m.facts.near_zero.items():
                if ":" not in thr:
                    out[f"{part}.{kind}_near_zero:{thr}"] = frac
    return out


def histograms_of(ev: Evidence) -> dict[str, dict[str, list[float]]]:
    """The reference models' weight-magnitude histograms (shown behind each student's in the feedback)."""
    out = {}
    for part, models in (("recap", checks.recap_models(ev)), ("cnn", checks.cnn_models(ev))):
        for kind in ("l1", "l2"):
            m = checks.pick(models, kind)
            if m is not None and m.facts is not None:
                out[f"{part}.{kind}"] = m.facts.abs_weight_histogram
    return out


def collect_seed(profile: str, seed: int, work: Path, data_dir: Path | None) -> Evidence:
    grader = Grader(GradingConfig(grades_dir=work, profile=profile, seed=seed, data_dir=data_dir))
    return grader.collect(SOLUTION, work / JOBS / f"reference-seed{seed}")


def run_seed(profile: str, seed: int, work: Path, data_dir: Path | None) -> dict[str, float]:
    return metrics_of(collect_seed(profile, seed, work, data_dir))


def baseline(profile: str, seeds: list[int], data_dir: Path | None, work: Path) -> dict[str, Any]:
    per_seed: dict[str, dict[str, float]] = {}
    histograms: dict[str, Any] = {}
    for seed in seeds:
        ev = collect_seed(profile, seed, work, data_dir)
        metrics = metrics_of(ev)
        if not histograms:
            histograms = histograms_of(ev)
        per_seed[str(seed)] = metrics
        print(f"seed {seed}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "near_zero:0.001" in k or k.endswith(("mse", "accuracy"))), flush=True)
    names = sorted({k for m in per_seed.values() for k in m})
    return {
        "profile": profile,
        "seeds": seeds,
        # The grader applies these tolerances only to the data they were measured on (Grader.baseline).
        "data": DatasetStore(profile, work / ".cache", data_dir).sources,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": machine(),
        "command": "python -m reference " + " ".join(sys.argv[1:]),
        "metrics": {name: [per_seed[str(s)][name] for s in seeds] for name in names},
        "per_seed": per_seed,
        "histograms": {"seed": seeds[0], **histograms},
    }


def check(profile: str, seed: int, data_dir: Path | None, work: Path, path: Path) -> int:
    """Rerun one stored seed; fail when a graded metric leaves the band the baseline allows."""
    stored = json.loads(path.read_text())
    if str(seed) not in stored["per_seed"]:
        print(f"the baseline {path} has no run for seed {seed}", file=sys.stderr)
        return 2
    metrics = run_seed(profile, seed, work, data_dir)
    problems = drift(stored, seed, metrics)
    for line in problems:
        print(line)
    if not problems:
        print(f"reference metrics for seed {seed} reproduce the baseline ({path.name})")
    return 1 if problems else 0


def drift(stored: dict[str, Any], seed: int, metrics: dict[str, float]) -> list[str]:
    """Metrics that moved outside the spread of the stored distribution."""
    problems = []
    old = stored["per_seed"][str(seed)]
    for name, values in stored["metrics"].items():
        if name.endswith("train_seconds") or name not in metrics:
            continue
        spread = max(values) - min(values)
        allowed = max(0.5 * spread, 1e-6 + 0.01 * abs(old[name]))
        moved = metrics[name] - old[name]
        if abs(moved) > allowed:
            problems.append(
                f"{name} moved by {moved:+.4g} (from {old[name]:.4g} to {metrics[name]:.4g}); "
                f"allowed: +/-{allowed:.4g} (half the spread over {len(values)} seeds)"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="run the solution over several seeds and write reference/baselines/<profile>.json")
    b.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..N-1 (default 10)")
    b.add_argument("--out", type=Path, default=None)
    c = sub.add_parser("check", help="rerun one seed of the solution and compare it with the stored baseline")
    settings.add_argument(c, "seed")
    k = sub.add_parser("calibrate", help="grade the labelled variant and pattern corpora over several seeds; write reference/calibration/<profile>.json")
    k.add_argument("--seeds", type=int, nargs="+", default=None, help="grading seeds (default 100 101 102)")
    k.add_argument("--variants", type=int, default=85, help="number of variants (default 85)")
    k.add_argument("--parallel", type=int, default=2, help="kernels at a time (default 2)")
    for command in (b, c, k):  # the grader's own settings (grader/settings.py), environment variables included
        settings.add_argument(command, "profile")
        settings.add_argument(command, "data_dir")
    k.add_argument("--work", type=Path, default=None, help="keep executions here and reuse them on the next run")
    k.add_argument("--force", action="store_true", help="execute again even what --work already holds")
    k.add_argument("--rejudge", action="store_true", help="judge the executions --work holds again, without executing")
    k.add_argument(
        "--patterns", action=argparse.BooleanOptionalAction, default=True,
        help="also grade the student-pattern corpus, reference/patterns.py (default: yes)",
    )
    k.add_argument("--out", type=Path, default=None, help="write the record here (default reference/calibration/<profile>.json)")
    args = parser.parse_args(argv)
    try:
        settings.resolve_arguments(args, ("profile", "data_dir") + (("seed",) if args.command == "check" else ()))
    except settings.UsageError as exc:
        parser.error(str(exc))
    if args.command == "calibrate":
        from reference import calibrate

        seeds = args.seeds or list(calibrate.DEFAULT_SEEDS)
        with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
            work = (args.work or Path(tmp)).resolve()
            return calibrate.calibrate(
                args.profile, seeds, work, args.data_dir, args.parallel, args.variants, args.force, args.out,
                args.rejudge, args.patterns,
            )
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        work = Path(tmp)
        if args.command == "baseline":
            out = args.out or BASELINES / f"{args.profile}.json"
            data = baseline(args.profile, list(range(args.seeds)), args.data_dir, work)
            write_json_atomic(out, data)
            print(f"wrote {out}")
            return 0
        return check(args.profile, args.seed, args.data_dir, work, BASELINES / f"{args.profile}.json")


if __name__ == "__main__":
    sys.exit(main())
