"""Measure how often each check is wrong: grade the labelled corpora over several seeds.

    python -m reference calibrate --profile smoke --seeds 100 101 102

Two corpora are graded. The variant corpus (``reference/corpus.py``): model specs written as the
exercise asks, combined into 85 variants, with a verdict for every check. The student-pattern corpus
(``reference/patterns.py``): 83 cells that train a model the ways students really do (``tf.data``,
generators, ``GradientTape``, XLA steps, custom layers and regularizers, ``add_loss``, hand-written
penalties, penalties set on built layers, ...), each graded as a submission of its
own (its family's set-up cell plus that cell), with a verdict only for the checks its truths decide
(``patterns.expected``: the regularizer checks of its part and the leakage check; a pattern trains 1 or
2 epochs, so its metrics decide nothing).

For each seed the grader executes both corpora's family notebooks, exactly as it executes a submission
(sandbox, capture, evaluator, provenance), then every variant's and pattern's evidence is judged by the
rubric's checks with the profile's baseline bounds, and each verdict is compared with the label. The
result, ``reference/calibration/<profile>.json``, holds per check the false-fail rate (a should-pass
verdict failed) and the false-pass rate (a should-fail verdict passed) with their counts, over both
corpora (``checks``) and per corpus (``checks_by_corpus``), every misjudged (variant or pattern, seed),
and the same rates for the candidate sparsity criteria (variant corpus only). ``docs/calibration.md``
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

from grader import settings
from grader.grade import Grader
from grader.judging import checks
from grader.machine import machine, versions
from grader.records import CellOutcome, CheckResult, EvaluationEvidence, Evidence, ModelEvidence, write_json_atomic
from grader.runner.files import JobFiles
from grader.settings import GradingConfig
from reference import corpus, patterns

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration"
MAX_ERROR_RATE = 0.01
MIN_GRADINGS = 200
DEFAULT_SEEDS = (100, 101, 102)
THRESHOLDS = ("0.01", "0.001", "0.0001")
PATTERN_JOB_PREFIX = "patterns-"  # pattern family notebooks run as jobs named patterns-<family>
CORPORA = ("variants", "patterns")


@dataclasses.dataclass(frozen=True)
class Job:
    """One family notebook to execute per seed: its job name, notebook and relative cost (for ordering)."""

    name: str
    notebook: Any
    cost: float


def pattern_job(fam: patterns.Family) -> str:
    """The job name (and evidence key) of a pattern family: distinct from the variant corpus's ``recap``."""
    return PATTERN_JOB_PREFIX + fam.name


def pattern_cost(p: patterns.Pattern) -> float:
    """A pattern cell's training time, in the units of ``corpus.Family.cost`` (a 10-epoch CNN is 8)."""
    return 8.0 * 0.2 if p.dataset == "cifar10" else 0.3


def jobs(with_patterns: bool = True) -> list[Job]:
    out = [Job(fam.name, fam.notebook, fam.cost) for fam in corpus.families()]
    if with_patterns:
        out += [
            Job(pattern_job(fam), fam.notebook, sum(pattern_cost(patterns.BY_NAME[n]) for n in fam.cell_of))
            for fam in patterns.families(only={p.name for p in patterns.CALIBRATED})
        ]
    return out


def _collect(grader: Grader, notebook: Path, job_dir: Path, rejudge: bool = False) -> Evidence:
    """The family notebook's evidence, executed once per (notebook, seed, settings) and then reused.

    ``rejudge`` takes whatever evidence ``job_dir`` holds, even if the grader's executing code changed
    since: for judging the same executions again after a change to the checks or the rubric.
    """
    if rejudge and JobFiles(job_dir).evidence.is_file():
        from grader.grade import load_evidence

        return load_evidence(JobFiles(job_dir).evidence)
    key = grader.cache_key(notebook)
    evidence = None if grader.config.force else grader.cached_evidence(job_dir, key)
    if evidence is None:
        evidence = grader.collect(notebook, job_dir)
        (job_dir / "cache-key").write_text(key)
    return evidence


def execute_families(
    profile: str, seeds: list[int], work: Path, data_dir: Path | None, parallel: int, force: bool,
    rejudge: bool = False, with_patterns: bool = True,
) -> dict[int, dict[str, Evidence]]:
    """Seed -> job name -> the family notebook's evidence, for the variant corpus and (``with_patterns``)
    the pattern corpus, every notebook under the same seed, grader settings and parallelism."""
    fams = jobs(with_patterns)
    notebooks = work / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    for fam in fams:
        nbformat.write(fam.notebook, notebooks / f"{fam.name}.ipynb")
    threads = settings.threads_setting("auto", parallel)  # --threads auto: the cores shared by the kernels at a time
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
    todo = sorted(((seed, fam) for seed in seeds for fam in fams), key=lambda j: -j[1].cost)
    out: dict[int, dict[str, Evidence]] = {seed: {} for seed in seeds}
    started = time.monotonic()

    def run(job: tuple[int, Job]) -> tuple[int, str, Evidence]:
        seed, fam = job
        g = graders[seed]
        ev = _collect(g, notebooks / f"{fam.name}.ipynb", g.config.jobs_dir / fam.name, rejudge)
        return seed, fam.name, ev

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for seed, name, ev in pool.map(run, todo):
            out[seed][name] = ev
            bad = [c.index for c in ev.cells if c.status != "ok" and c.error_name != "NameError"]
            print(
                f"  executed {name} (seed {seed}): {ev.status}, {len(ev.models)} models"
                + (f", cells failing unexpectedly: {bad}" if bad else "")
                + f" [{time.monotonic() - started:.0f} s]",
                flush=True,
            )
    return out


def _models_of_cell(ev: Evidence, job: str, cell: int) -> tuple[list[ModelEvidence], list[EvaluationEvidence]]:
    """The models a family notebook's ``cell`` trained and their evaluations, keyed apart from other jobs'."""
    chosen = [m for m in ev.models if m.cell == cell]
    keys = {m.key for m in chosen}
    models = [dataclasses.replace(m, key=f"{job}/{m.key}") for m in chosen]
    evaluations = [
        dataclasses.replace(e, model_key=f"{job}/{e.model_key}") for e in ev.evaluations if e.model_key in keys
    ]
    return models, evaluations


def _submission(cells: list[CellOutcome], models: list[ModelEvidence], evaluations: list[EvaluationEvidence]) -> Evidence:
    return Evidence(
        status="completed", reason="", cells=cells, models=models, evaluations=evaluations,
        printed=[], neutralised=[], timings={},
    )


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
            more, evaluated = _models_of_cell(evs[fam.name], fam.name, fam.cell_of[name])
            models += more
            evaluations += evaluated
    return _submission(cells, models, evaluations)


def compose_pattern(p: patterns.Pattern, evs: dict[str, Evidence], fams: list[patterns.Family]) -> Evidence:
    """The evidence of the submission made of ``p``'s family's set-up cell and ``p``'s own cell, as
    :func:`compose` restricts a variant's families to its cells."""
    fam = next(f for f in fams if f.name == patterns.family_name(p))
    ev = evs[pattern_job(fam)]
    cell = fam.cell_of[p.name]
    keep = set(fam.setup) | {cell}
    models, evaluations = _models_of_cell(ev, pattern_job(fam), cell)
    return _submission([c for c in ev.cells if c.index in keep], models, evaluations)


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

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(Tally)))

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


def _verdicts(
    ev: Evidence, labels: dict[str, bool | None], rubric: checks.Rubric, bounds: checks.Bounds,
    tallies: dict[str, Tally], misjudged: list[dict[str, Any]], what: dict[str, Any],
) -> None:
    """Run every check on ``ev``, tally each verdict against its label, and note every misjudged one."""
    results: dict[str, CheckResult] = {r.id: r for r in checks.run_checks(ev, rubric, bounds)}
    for cid in checks.CHECK_IDS:
        wrong = tallies[cid].add(labels[cid], results[cid].passed)
        if wrong:
            misjudged.append({"check": cid, **what, "error": wrong, "message": results[cid].message})


def _model_summary(m: ModelEvidence) -> dict[str, Any]:
    """What the grader saw of one model a pattern trained: what its verdicts were decided from."""
    return {
        "dataset": m.dataset,
        "conv": checks.has_conv(m),
        "kernel_kinds": sorted(checks.kernel_kinds(m)),
        "untrained_penalties": list(m.untrained_penalties),
        "leaked_test_rows": m.leaked_test_rows,
        "epochs": m.epochs,
        "steps": m.steps,
        "metric_name": m.metric_name,
        "metric": m.metric,
    }


def judge(
    evidence: dict[int, dict[str, Evidence]], grader: Grader, variants: list[corpus.Variant],
    pattern_list: list[patterns.Pattern] | None = None,
) -> dict[str, Any]:
    """Judge every variant (and every pattern of ``pattern_list``) under every seed's evidence."""
    fams = corpus.families()
    pattern_fams = patterns.families(only={p.name for p in patterns.CALIBRATED})
    pattern_list = pattern_list or []
    rubric = grader.rubric
    bounds = grader.bounds
    criteria = sparsity_criteria(grader.baseline, float(rubric.settings.get("widen", 1.0)))
    by_corpus = {name: {cid: Tally() for cid in checks.CHECK_IDS} for name in CORPORA}
    crit_tallies = {name: Tally() for name in criteria}
    misjudged: list[dict[str, Any]] = []
    metrics: dict[str, list[float]] = {}
    pattern_models: dict[str, list[dict[str, Any]]] = {}
    for seed, evs in evidence.items():
        for v in variants:
            ev = compose(v, evs, fams)
            labels = corpus.expected(v)
            _verdicts(ev, labels, rubric, bounds, by_corpus["variants"], misjudged, {"corpus": "variants", "variant": v.name, "seed": seed})
            label = labels["cnn.l1_sparsity"]
            l1 = checks.pick(checks.cnn_models(ev), "l1")
            l2 = checks.pick(checks.cnn_models(ev), "l2")
            a = l1.facts.near_zero if l1 is not None and l1.facts is not None and l1.facts.loaded else None
            b = l2.facts.near_zero if l2 is not None and l2.facts is not None and l2.facts.loaded else None
            for name, predicate in criteria.items():
                crit_tallies[name].add(label, a is not None and bool(predicate(a, b)))
        for p in pattern_list:
            ev = compose_pattern(p, evs, pattern_fams)
            what = {"corpus": "patterns", "variant": p.name, "seed": seed}
            _verdicts(ev, patterns.expected(p), rubric, bounds, by_corpus["patterns"], misjudged, what)
            pattern_models.setdefault(p.name, []).append({"seed": seed, "models": [_model_summary(m) for m in ev.models]})
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

    def rated(tallies: dict[str, Tally]) -> dict[str, Any]:
        return {cid: {"points": rubric.checks[cid].points, **tallies[cid].rates()} for cid in checks.CHECK_IDS}

    combined = {cid: by_corpus["variants"][cid] + by_corpus["patterns"][cid] for cid in checks.CHECK_IDS}
    return {
        "checks": rated(combined),
        "checks_by_corpus": {name: rated(tallies) for name, tallies in by_corpus.items()},
        "sparsity_criteria": {name: t.rates() for name, t in crit_tallies.items()},
        "misjudged": misjudged,
        "spec_metrics": {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in sorted(metrics.items())},
        "pattern_models": pattern_models,
    }


def _rates_table(first: str, rates: dict[str, dict[str, Any]], points: bool, labelled_only: bool = False) -> str:
    """A markdown table of false-fail and false-pass counts and rates, one row per check or criterion
    (``labelled_only``: without the rows of no labelled grading); a rate of no grading shows as ``-``."""
    head = [first, *(["points", "gradings"] if points else []), "false fails", "false-fail rate", "false passes", "false-pass rate"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in rates.items():
        if labelled_only and not r["gradings"]:
            continue
        cells = [f"`{name}`", f"{r['points']:g}", str(r["gradings"])] if points else [name]
        for wrong, out_of, rate in (("false_fail", "should_pass", "false_fail_rate"), ("false_pass", "should_fail", "false_pass_rate")):
            cells += [f"{r[wrong]}/{r[out_of]}", f"{r[rate]:.1%}"] if r[out_of] else ["-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def table(result: dict[str, Any], corpus_name: str | None = None, labelled_only: bool = False) -> str:
    """The per-check table over both corpora, or over one (``variants`` or ``patterns``)."""
    rates = result["checks"] if corpus_name is None else result["checks_by_corpus"][corpus_name]
    return _rates_table("check", rates, points=True, labelled_only=labelled_only)


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
    out: Path | None, rejudge: bool = False, with_patterns: bool = True,
) -> int:
    started = time.monotonic()
    variants = corpus.variants(count)
    pattern_list = list(patterns.CALIBRATED) if with_patterns else []
    print(
        f"calibrating profile {profile!r}: {len(variants)} variants and {len(pattern_list)} patterns x {len(seeds)} "
        f"seeds, {parallel} kernels at a time",
        flush=True,
    )
    evidence = execute_families(profile, seeds, work, data_dir, parallel, force, rejudge, with_patterns)
    executed = time.monotonic() - started
    run_file = work / "execution.json"
    command = "python -m reference " + " ".join(sys.argv[1:])
    if rejudge and run_file.is_file():  # the executions are the earlier run's: so are their time and command
        earlier = json.loads(run_file.read_text())
        executed, command = earlier["seconds"], earlier["command"] + "  (judged again with --rejudge)"
    else:
        write_json_atomic(run_file, {"seconds": executed, "command": command})
    grader = Grader(GradingConfig(grades_dir=work / "judge", profile=profile, data_dir=data_dir, cache_dir=work / ".cache"))
    result = judge(evidence, grader, variants, pattern_list)
    judged = time.monotonic() - started - (0.0 if rejudge else executed)
    elapsed = executed + judged

    def trained_in(of_patterns: bool) -> int:
        return sum(
            len(ev.models) for evs in evidence.values() for name, ev in evs.items()
            if name.startswith(PATTERN_JOB_PREFIX) == of_patterns
        )

    trained = trained_in(False) + trained_in(True)
    gradings = {"variants": len(variants) * len(seeds), "patterns": len(pattern_list) * len(seeds)}
    record = {
        "profile": profile,
        "seeds": seeds,
        "variants": len(variants),
        "patterns": len(pattern_list),
        "gradings": sum(gradings.values()),  # submissions judged: variants and patterns, each once per seed
        "gradings_by_corpus": gradings,
        "trained_models": trained,
        "trained_models_by_corpus": {"variants": trained_in(False), "patterns": trained_in(True)},
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
            "patterns": [
                {
                    **{k: v for k, v in dataclasses.asdict(p).items() if k != "code"},
                    "family": PATTERN_JOB_PREFIX + patterns.family_name(p),
                }
                for p in pattern_list
            ],
            "pattern_labels": {p.name: patterns.expected(p) for p in pattern_list},
        },
    }
    path = out or CALIBRATION / f"{profile}.json"
    write_json_atomic(path, record)
    for title, name in (("both corpora", None), ("variant corpus", "variants"), ("pattern corpus", "patterns")):
        print(f"\n{title}:")
        print(table(result, name, labelled_only=name == "patterns"))
    print()
    print(criteria_table(result))
    print()
    for m in result["misjudged"]:
        print(f"{m['error']}: {m['check']} on {m['variant']} (seed {m['seed']}): {m['message'][:300]}")
    problems = over_limit(result)
    print(
        f"\n{record['gradings']} gradings ({len(variants)} variants and {len(pattern_list)} patterns x {len(seeds)} seeds) "
        f"built from {trained} trained models, in {elapsed / 60:.1f} min; wrote {path}"
    )
    if problems:
        print("checks that carry points but should not (set their points to 0 in grader/judging/rubric.toml, with the reason):")
        for line in problems:
            print("  " + line)
    return 0
