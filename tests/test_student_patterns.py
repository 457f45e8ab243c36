"""Grade the student-pattern corpus (``reference/patterns.py``) and hold the grader to its truths.

One module-scoped fixture executes the corpus's family notebooks through the grader (profile ``tiny``,
two notebooks at a time, one Grader for both), as it executes a submission. Then, per pattern, the model its cell trained
must have been captured, its data identified as the right dataset, its kernel penalty kinds must be
the ones its training really applied, its metric recomputed by the grader must agree with what the
cell's own ``evaluate`` returned, and it must be reported as trained on test rows exactly when it was.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import traceback
from pathlib import Path
from typing import Any

import nbformat
import pytest

from grader.grade import Grader
from grader.judging import checks
from grader.records import Evidence, ModelEvidence
from grader.settings import GradingConfig
from reference import patterns

PROFILE = "tiny"
# The patterns the default run grades: one per training path that needs its own capture (a rebuilt
# model, a generator, train_on_batch, traced and eager loops), per preparation the provenance must see
# through, per leakage route, and per way a penalty reaches the gradient, correct and wrong. The others
# are marked slow (``pytest tests/ -m slow`` grades them; reference/calibrate.py grades all of them at
# the smoke profile).
FAST = {
    "rebuild.cnn_clone_model_l1",
    "rebuild.recap_set_after_compile_l1",
    "training.generator_l1",
    "training.train_on_batch_l2",
    "training.tape_function_l2",
    "training.tape_eager_no_losses_l1",
    "preprocessing.per_image_standardization_l1",
    "preprocessing.one_hot_bias_l2",
    "integrity.test_only_train_on_batch_l2",
    "recap.dataset_l1",
    "recap.tape_eager_no_losses_l1",
    # XLA steps, whose compiling takes most of a family's time, are measured in-process by
    # tests/test_penalty_probes.py.
    "mechanisms.custom_function_named_l1_computes_l2",
    "mechanisms.add_loss_activity_l2",
    "mechanisms.tape_penalty_outside_tape_l1",
    "mechanisms.dict_inputs_model_l2",
}
CASES = [
    pytest.param(p, id=p.name, marks=() if p.name in FAST else pytest.mark.slow) for p in patterns.PATTERNS
]
ACCURACY_TOLERANCE = 0.02  # absolute, on the 200 test images of the tiny profile
MSE_TOLERANCE = 0.05  # relative


@dataclasses.dataclass(frozen=True)
class Graded:
    """One family notebook as the grader left it: its evidence and job dir, or the grader's traceback."""

    family: patterns.Family
    evidence: Evidence | None
    job_dir: Path
    crash: str = ""


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Graded]:
    """Family name -> its grading, of the patterns this session selected; every family is executed even
    when the grader fails on another."""
    selected = {
        item.callspec.params["pattern"].name
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("pattern"), patterns.Pattern)
    }
    work = tmp_path_factory.mktemp("patterns")
    grader = Grader(GradingConfig(grades_dir=work / "grades", profile=PROFILE, cache_dir=work / "cache"))
    notebooks = work / "notebooks"
    notebooks.mkdir()

    def grade(fam: patterns.Family) -> Graded:
        path = notebooks / f"{fam.name}.ipynb"
        nbformat.write(fam.notebook, path)
        job_dir = grader.config.jobs_dir / fam.name
        try:
            return Graded(fam, grader.collect(path, job_dir), job_dir)
        except Exception:  # noqa: BLE001 - reported by every pattern of the family
            return Graded(fam, None, job_dir, crash=traceback.format_exc())

    # Two family notebooks at a time, as a Dask worker with two threads runs them (one Grader, shared).
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return {g.family.name: g for g in pool.map(grade, patterns.families(only=selected))}


def cell_of_execution(job_dir: Path) -> dict[int, int]:
    """Kernel execution count -> notebook cell index, from the executed notebook."""
    nb = json.loads((job_dir / "executed.ipynb").read_text(encoding="utf-8"))
    return {
        int(cell["execution_count"]): i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and isinstance(cell.get("execution_count"), int)
    }


def evaluate_records(job_dir: Path, cell: int) -> list[dict[str, Any]]:
    """The ``evaluate`` calls the kernel recorded while ``cell`` ran, in call order."""
    cells = cell_of_execution(job_dir)
    out = []
    for line in (job_dir / "artifacts" / "records.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("type") == "evaluate" and cells.get(record.get("cell")) == cell:
            out.append(record)
    return out


def model_of_cell(evidence: Evidence, cell: int, evaluated: list[dict[str, Any]]) -> ModelEvidence | None:
    """The captured model the cell trained: the one its evaluate call used, else the last one trained there."""
    trained = [m for m in evidence.models if m.cell == cell]
    used = {r["model_key"] for r in evaluated}
    return next((m for m in reversed(trained) if m.key in used), trained[-1] if trained else None)


def metric_disagreement(model: ModelEvidence, returned: float) -> str:
    """Why the grader's recomputed metric and the notebook's own disagree ('' when they agree)."""
    if model.metric is None:
        return f"no metric recomputed ({model.metric_error or 'no reason given'})"
    if model.metric_name == "accuracy":
        ok = abs(model.metric - returned) <= ACCURACY_TOLERANCE
    else:
        ok = abs(model.metric - returned) <= MSE_TOLERANCE * abs(returned)
    return "" if ok else f"{model.metric_name} recomputed {model.metric:.4g}, the notebook's evaluate returned {returned:.4g}"


def problems(pattern: patterns.Pattern, model: ModelEvidence, evaluated: list[dict[str, Any]]) -> list[str]:
    """Every way the grader's view of ``model`` differs from the pattern's truths."""
    out = []
    if model.dataset != pattern.dataset or not model.data_verified:
        out.append(
            f"data identified as {model.dataset} (verified: {model.data_verified}; {model.data_note or 'no note'}), "
            f"expected {pattern.dataset}"
        )
    if checks.has_conv(model) != pattern.cnn:
        out.append(f"convolution found: {checks.has_conv(model)}, expected {pattern.cnn}")
    kinds = checks.kernel_kinds(model)
    if kinds != pattern.kinds:
        out.append(f"kernel penalty kinds {sorted(kinds)}, expected {sorted(pattern.kinds)}")
    if pattern.reproducible:
        own = [r for r in evaluated if r["model_key"] == model.key]
        if not own:
            out.append("no evaluate call of this model was recorded")
        else:
            why = metric_disagreement(model, float(own[-1]["returned"][-1]))
            if why:
                out.append(why)
    if (model.leaked_test_rows > 0) != pattern.leaks:
        out.append(f"{model.leaked_test_rows} leaked test rows reported, expected {'some' if pattern.leaks else 'none'}")
    return out


@pytest.mark.parametrize("pattern", CASES)
def test_the_grader_sees_each_pattern_as_it_really_trained(graded: dict[str, Graded], pattern: patterns.Pattern) -> None:
    run = graded[patterns.family_name(pattern)]
    if run.evidence is None:
        pytest.fail(f"the grader failed on family notebook {run.family.name!r}:\n{run.crash}")
    cell = run.family.cell_of[pattern.name]
    outcome = next((c for c in run.evidence.cells if c.index == cell), None)
    assert outcome is not None and outcome.status == "ok", (
        f"cell {cell} did not run: {outcome.status if outcome else 'no outcome'} "
        f"{outcome.error_name + ': ' + outcome.error_value if outcome else ''}"
    )
    evaluated = evaluate_records(run.job_dir, cell)
    model = model_of_cell(run.evidence, cell, evaluated)
    assert model is not None, f"no model captured for cell {cell} ({len(run.evidence.models)} captured in the family)"
    found = problems(pattern, model, evaluated)
    assert not found, "; ".join(found)


def test_the_corpus_covers_every_topic_with_correct_and_wrong_patterns() -> None:
    counts = patterns.counts()
    assert len(patterns.PATTERNS) >= 40
    assert set(counts) == set(patterns.TOPICS)
    for topic in ("rebuild", "training", "preprocessing", "recap", "mechanisms"):
        assert counts[topic]["wrong"] > 0, topic
    for topic in patterns.TOPICS:
        kinds = {p.penalty for p in patterns.PATTERNS if p.topic == topic}
        assert {"l1", "l2"} <= kinds, topic
    assert len(patterns.BY_NAME) == len(patterns.PATTERNS)


def test_the_patterns_ci_grades_cover_every_topic_correct_and_wrong() -> None:
    chosen = [patterns.BY_NAME[name] for name in FAST]
    for topic in patterns.TOPICS:
        in_topic = [p for p in chosen if p.topic == topic]
        assert in_topic, topic
        if topic != "integrity":  # every integrity pattern is a wrong one (it leaks)
            assert {p.penalty is None for p in in_topic} == {True, False}, topic
