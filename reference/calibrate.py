"""Measure how often each check is wrong: grade the labelled corpus (reference/corpus.py) over several seeds.

    python -m reference calibrate --profile smoke --seeds 100 101 102

For each seed the grader executes the corpus's family notebooks, exactly as it executes a submission
(sandbox, capture, evaluator, provenance), then every variant's evidence is judged by the rubric's
checks with the profile's baseline bounds, and each verdict is compared with the label. The result,
``reference/calibration/<profile>.json``, holds per check the false-fail rate (a should-pass verdict
failed) and the false-pass rate (a should-fail verdict passed) with their counts, every misjudged
(variant, seed), and the same rates for the candidate sparsity criteria. ``docs/calibration.md``
quotes it, and ``tests/test_calibration.py`` holds the rubric to it: a check that carries points must
be wrong at most ``MAX_ERROR_RATE`` of the time on at least ``MIN_GRADINGS`` gradings.

The seeds default to 100.., not the baseline's 0..9, so that the reference runs the bounds were derived
from are not graded again here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import nbformat

from grader import checks
from grader.grade import Grader, GradingConfig
from grader.plugin import available_cores
from grader.records import CheckResult, Evidence, write_json_atomic
from reference import corpus

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration"
MAX_ERROR_RATE = 0.01
MIN_GRADINGS = 200
DEFAULT_SEEDS = (100, 101, 102)
THRESHOLDS = ("0.01", "0.001", "0.0001")


def _collect(grader: Grader, notebook: Path, job_dir: Path, rejudge: bool = False) -> Evidence:
    """The family notebook's evidence, executed once per (notebook, seed, settings) and then reused.

    ``rejudge`` takes whatever evidence ``job_dir`` holds, even if the grader's executing code changed
    since: for judging the same executions again after a change to the checks or the rubric.
    """
    if rejudge and (job_dir / "evidence.json").is_file():
        from grader.grade import load_evidence

        return load_evidence(job_dir / "evidence.json")
    key = grader.cache_key(notebook)
    evidence = None if grader.config.force else grader.cached_evidence(job_dir, key)
    if evidence is None:
        evidence = grader.collect(notebook, job_dir)
        (job_dir / "cache-key").write_text(key)
    return evidence


def execute_families(
    profile: str, seeds: list[int], work: Path, data_dir: Path | None, parallel: int, force: bool,
    rejudge: bool = False,
) -> dict[int, dict[str, Evidence]]:
    fams = corpus.families()
    notebooks = work / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    for fam in fams:
        nbformat.write(fam.notebook, notebooks / f"{fam.name}.ipynb")
    threads = max(1, available_cores() // parallel)
    graders = {
        seed: Grader(
            GradingConfig(
                grades_dir=work / f"seed{seed}", profile=profile, seed=seed, data_dir=data_dir,
                cache_dir=work / ".cache", threads=threads, force=force, notebook_timeout=3600.0,
            )
        )
        for seed in seeds
    }
    for g in graders.values():  # shared, lazily built state: build it before the threads start
        _ = (g.data_dir, g.canonicals, g.bounds)
    jobs = sorted(((seed, fam) for seed in seeds for fam in fams), key=lambda j: -j[1].cost)
    out: dict[int, dict[str, Evidence]] = {seed: {} for seed in seeds}
    started = time.monotonic()

    def run(job: tuple[int, corpus.Family]) -> tuple[int, str, Evidence]:
        seed, fam = job
        g = graders[seed]
        ev = _collect(g, notebooks / f"{fam.name}.ipynb", g.config.jobs_dir / fam.name, rejudge)
        return seed, fam.name, ev

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for seed, name, ev in pool.map(run, jobs):
            out[seed][name] = ev
            bad = [c.index for c in ev.cells if c.status != "ok" and c.error_name != "NameError"]
            print(
                f"  executed {name} (seed {seed}): {ev.status}, {len(ev.models)} models"
                + (f", cells failing unexpectedly: {bad}" if bad else "")
                + f" [{time.monotonic() - started:.0f} s]",
                flush=True,
            )
    return out


def compose(v: corpus.Variant, evs: dict[str, Evidence], fams: list[corpus.Family]) -> Evidence:
    """The evidence of the submission made of ``v``'s cells: the families' evidence restricted to them."""
    home = corpus.home(fams)
    cells = []
    models = []
    evaluations = []
    for half in (v.recap, v.practice):
        used = list(dict.fromkeys(home[n].name for n in half))  # the families this half draws on, in order
        for fam in (f for f in fams if f.name in used):
            ev = evs[fam.name]
            wanted = {fam.cell_of[n] for n in half if home[n] is fam}
            keep = wanted if corpus.CRASH in half else set(fam.setup) | wanted
            cells += [c for c in ev.cells if c.index in keep]
        for name in half:  # the models in the half's own order: its L1 slot, then its L2 slot
            fam = home[name]
            ev = evs[fam.name]
            chosen = [m for m in ev.models if m.cell == fam.cell_of[name]]
            keys = {m.key for m in chosen}
            models += [dataclasses.replace(m, key=f"{fam.name}/{m.key}") for m in chosen]
            evaluations += [
                dataclasses.replace(e, model_key=f"{fam.name}/{e.model_key}")
                for e in ev.evaluations
                if e.model_key in keys
            ]
    return Evidence(
        status="completed", reason="", cells=cells, models=models, evaluations=evaluations,
        printed=[], neutralised=[], timings={},
    )


# ------------------------------------------------------------------------------------------------
# Sparsity criteria compared on the same gradings
# ------------------------------------------------------------------------------------------------


def sparsity_criteria(baseline: dict[str, Any], widen: float) -> dict[str, Any]:
    """name -> predicate(l1 fractions, l2 fractions or None) for the candidate ways to call an L1 CNN sparse."""
    metrics = baseline["metrics"]
    out: dict[str, Any] = {}
    for t in THRESHOLDS:
        l1_ref = [float(x) for x in metrics[f"cnn.l1_near_zero:{t}"]]
        l2_ref = [float(x) for x in metrics[f"cnn.l2_near_zero:{t}"]]
        floor = max(0.0, checks.bound_from(l1_ref, "min", widen))
        l2_max = max(l2_ref)

        def floor_only(a: dict[str, float], b: dict[str, float] | None, t: str = t, floor: float = floor) -> bool:
            return a[t] >= floor and a[t] > 0

        def above_own(a: dict[str, float], b: dict[str, float] | None, t: str = t, floor: float = floor) -> bool:
            return a[t] > b[t] if b is not None else (a[t] >= floor and a[t] > 0)

        def floor_and_own(a: dict[str, float], b: dict[str, float] | None, t: str = t, floor: float = floor) -> bool:
            return a[t] >= floor and a[t] > 0 and (b is None or a[t] > b[t])

        def above_l2_ref(a: dict[str, float], b: dict[str, float] | None, t: str = t, m: float = l2_max) -> bool:
            return a[t] > m

        def grader_rule(a: dict[str, float], b: dict[str, float] | None, t: str = t, m: float = l2_max) -> bool:
            return m < a[t] < checks.COLLAPSED_SHARE

        out[f"|w|<{t}: at least the reference L1 floor ({floor:.3f})"] = floor_only
        out[f"|w|<{t}: more than the student's own L2 CNN (the floor without one)"] = above_own
        out[f"|w|<{t}: the floor, and more than the student's own L2 CNN"] = floor_and_own
        out[f"|w|<{t}: more than every reference L2 run ({l2_max:.3f})"] = above_l2_ref
        out[f"|w|<{t}: more than every reference L2 run, and under {checks.COLLAPSED_SHARE:.0%} (collapsed)"] = grader_rule
    return out


# ------------------------------------------------------------------------------------------------
# Tallies
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    should_pass: int = 0
    false_fail: int = 0
    should_fail: int = 0
    false_pass: int = 0
    unlabelled: int = 0

    def add(self, expected: bool | None, passed: bool) -> str | None:
        if expected is None:
            self.unlabelled += 1
            return None
        if expected:
            self.should_pass += 1
            if not passed:
                self.false_fail += 1
                return "false fail"
        else:
            self.should_fail += 1
            if passed:
                self.false_pass += 1
                return "false pass"
        return None

    @property
    def gradings(self) -> int:
        return self.should_pass + self.should_fail

    def rates(self) -> dict[str, Any]:
        return {
            "gradings": self.gradings,
            "should_pass": self.should_pass,
            "false_fail": self.false_fail,
            "false_fail_rate": self.false_fail / self.should_pass if self.should_pass else 0.0,
            "should_fail": self.should_fail,
            "false_pass": self.false_pass,
            "false_pass_rate": self.false_pass / self.should_fail if self.should_fail else 0.0,
            "unlabelled": self.unlabelled,
        }


def judge(
    evidence: dict[int, dict[str, Evidence]], grader: Grader, variants: list[corpus.Variant]
) -> dict[str, Any]:
    fams = corpus.families()
    rubric = grader.rubric
    bounds = grader.bounds
    criteria = sparsity_criteria(grader.baseline, float(rubric.settings.get("widen", 1.0)))
    tallies = {cid: Tally() for cid in checks.CHECK_IDS}
    crit_tallies = {name: Tally() for name in criteria}
    misjudged: list[dict[str, Any]] = []
    metrics: dict[str, list[float]] = {}
    for seed, evs in evidence.items():
        for v in variants:
            ev = compose(v, evs, fams)
            labels = corpus.expected(v)
            results: dict[str, CheckResult] = {r.id: r for r in checks.run_checks(ev, rubric, bounds)}
            for cid in checks.CHECK_IDS:
                wrong = tallies[cid].add(labels[cid], results[cid].passed)
                if wrong:
                    misjudged.append(
                        {"check": cid, "variant": v.name, "seed": seed, "error": wrong, "message": results[cid].message}
                    )
            label = labels["cnn.l1_sparsity"]
            l1 = checks.pick(checks.cnn_models(ev), "l1")
            l2 = checks.pick(checks.cnn_models(ev), "l2")
            a = l1.facts.near_zero if l1 is not None and l1.facts is not None and l1.facts.loaded else None
            b = l2.facts.near_zero if l2 is not None and l2.facts is not None and l2.facts.loaded else None
            for name, predicate in criteria.items():
                crit_tallies[name].add(label, a is not None and bool(predicate(a, b)))
    # What each trained model measured, per spec: the spread the verdicts come from.
    home = corpus.home(fams)
    for evs in evidence.values():
        for spec in corpus.SPECS.values():
            fam = home[spec.name]
            for m in evs[fam.name].models:
                if m.cell == fam.cell_of[spec.name]:
                    if m.metric is not None:
                        metrics.setdefault(f"{spec.name}:{m.metric_name}", []).append(m.metric)
                    if m.facts is not None and m.facts.loaded:
                        metrics.setdefault(f"{spec.name}:near_zero:0.001", []).append(m.facts.near_zero.get("0.001", 0.0))
    return {
        "checks": {cid: {"points": rubric.checks[cid].points, **tallies[cid].rates()} for cid in checks.CHECK_IDS},
        "sparsity_criteria": {name: t.rates() for name, t in crit_tallies.items()},
        "misjudged": misjudged,
        "spec_metrics": {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in sorted(metrics.items())},
    }


def _rates_table(first: str, rates: dict[str, dict[str, Any]], points: bool) -> str:
    """A markdown table of false-fail and false-pass counts and rates, one row per check or criterion."""
    head = [first, *(["points", "gradings"] if points else []), "false fails", "false-fail rate", "false passes", "false-pass rate"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in rates.items():
        cells = [f"`{name}`", f"{r['points']:g}", str(r["gradings"])] if points else [name]
        cells += [f"{r['false_fail']}/{r['should_pass']}", f"{r['false_fail_rate']:.1%}"]
        cells += [f"{r['false_pass']}/{r['should_fail']}", f"{r['false_pass_rate']:.1%}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def table(result: dict[str, Any]) -> str:
    return _rates_table("check", result["checks"], points=True)


def criteria_table(result: dict[str, Any]) -> str:
    return _rates_table("sparsity criterion", result["sparsity_criteria"], points=False)


def over_limit(result: dict[str, Any]) -> list[str]:
    """Checks that carry points although their measured error rate is above the limit, or measured too rarely."""
    out = []
    for cid, r in result["checks"].items():
        if r["points"] <= 0:
            continue
        if r["false_fail_rate"] > MAX_ERROR_RATE or r["false_pass_rate"] > MAX_ERROR_RATE:
            out.append(f"{cid}: false-fail {r['false_fail_rate']:.1%}, false-pass {r['false_pass_rate']:.1%}")
        elif r["gradings"] < MIN_GRADINGS:
            out.append(f"{cid}: only {r['gradings']} labelled gradings (at least {MIN_GRADINGS} are needed)")
    return out


def calibrate(
    profile: str, seeds: list[int], work: Path, data_dir: Path | None, parallel: int, count: int, force: bool,
    out: Path | None, rejudge: bool = False,
) -> int:
    from reference.__main__ import machine, versions

    started = time.monotonic()
    variants = corpus.variants(count)
    print(f"calibrating profile {profile!r}: {len(variants)} variants x {len(seeds)} seeds, {parallel} kernels at a time", flush=True)
    evidence = execute_families(profile, seeds, work, data_dir, parallel, force, rejudge)
    executed = time.monotonic() - started
    run_file = work / "execution.json"
    command = "python -m reference " + " ".join(sys.argv[1:])
    if rejudge and run_file.is_file():  # the executions are the earlier run's: so are their time and command
        earlier = json.loads(run_file.read_text())
        executed, command = earlier["seconds"], earlier["command"] + "  (judged again with --rejudge)"
    else:
        write_json_atomic(run_file, {"seconds": executed, "command": command})
    grader = Grader(GradingConfig(grades_dir=work / "judge", profile=profile, data_dir=data_dir, cache_dir=work / ".cache"))
    result = judge(evidence, grader, variants)
    judged = time.monotonic() - started - (0.0 if rejudge else executed)
    elapsed = executed + judged
    trained = sum(len(ev.models) for evs in evidence.values() for ev in evs.values())
    record = {
        "profile": profile,
        "seeds": seeds,
        "variants": len(variants),
        "gradings": len(variants) * len(seeds),
        "trained_models": trained,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": {"execution": round(executed, 1), "judging": round(judged, 1), "total": round(elapsed, 1)},
        "versions": versions(),
        "machine": machine(),
        "command": command,
        "max_error_rate": MAX_ERROR_RATE,
        "min_gradings": MIN_GRADINGS,
        **result,
        "corpus": {
            "variants": [dataclasses.asdict(v) for v in variants],
            "labels": {v.name: corpus.expected(v) for v in variants},
        },
    }
    path = out or CALIBRATION / f"{profile}.json"
    write_json_atomic(path, record)
    print()
    print(table(result))
    print()
    print(criteria_table(result))
    print()
    for m in result["misjudged"]:
        print(f"{m['error']}: {m['check']} on {m['variant']} (seed {m['seed']}): {m['message'][:300]}")
    problems = over_limit(result)
    print(
        f"\n{record['gradings']} gradings of {len(variants)} variants built from {trained} trained models, "
        f"in {elapsed / 60:.1f} min; wrote {path}"
    )
    if problems:
        print("checks that carry points but should not (set their points to 0 in grader/rubric.toml, with the reason):")
        for line in problems:
            print("  " + line)
    return 0
