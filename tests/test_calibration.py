"""The rubric follows the measured error rates, and the corpus's labels follow its specs."""

from __future__ import annotations

import json
from typing import Any

import nbformat
import pytest

from grader.judging import checks
from grader.records import CellOutcome, Evidence, ModelEvidence
from reference import calibrate, corpus, patterns

MEASURED = calibrate.CALIBRATION / "smoke.json"


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    return json.loads(MEASURED.read_text())


def test_the_calibration_was_measured_on_enough_gradings(measured: dict[str, Any]) -> None:
    assert measured["profile"] == "smoke"
    assert measured["gradings"] >= calibrate.MIN_GRADINGS
    assert set(measured["checks"]) == set(checks.CHECK_IDS)


def test_the_calibration_graded_both_corpora_and_adds_them_up(measured: dict[str, Any]) -> None:
    assert set(measured["checks_by_corpus"]) == set(calibrate.CORPORA)
    seeds = len(measured["seeds"])
    assert measured["gradings_by_corpus"] == {
        "variants": measured["variants"] * seeds, "patterns": measured["patterns"] * seeds,
    }
    for cid, total in measured["checks"].items():
        parts = [measured["checks_by_corpus"][name][cid] for name in calibrate.CORPORA]
        for field in ("should_pass", "false_fail", "should_fail", "false_pass", "unlabelled"):
            assert total[field] == sum(part[field] for part in parts), (cid, field)


def test_the_calibration_record_was_made_with_the_current_pattern_labels(measured: dict[str, Any]) -> None:
    recorded = measured["corpus"]["pattern_labels"]
    assert recorded == {p.name: patterns.expected(p) for p in patterns.CALIBRATED}, (
        "the pattern corpus or its labels changed since the calibration: rerun `python -m reference calibrate`"
    )


def test_every_check_that_carries_points_is_rarely_wrong(measured: dict[str, Any]) -> None:
    rubric = checks.load_rubric()
    for cid, spec in rubric.checks.items():
        if spec.points == 0:
            continue
        r = measured["checks"][cid]
        assert r["gradings"] >= calibrate.MIN_GRADINGS, f"{cid} carries points but was measured on {r['gradings']} gradings"
        assert r["false_fail_rate"] <= calibrate.MAX_ERROR_RATE, f"{cid} carries points; false-fail rate {r['false_fail_rate']:.1%}"
        assert r["false_pass_rate"] <= calibrate.MAX_ERROR_RATE, f"{cid} carries points; false-pass rate {r['false_pass_rate']:.1%}"


def test_a_check_without_points_says_why(measured: dict[str, Any]) -> None:
    rubric = checks.load_rubric()
    for cid, spec in rubric.checks.items():
        if spec.points == 0:
            assert spec.note, f"{cid} carries no points and its rubric entry gives no reason"


def test_the_calibration_record_was_made_with_the_current_points(measured: dict[str, Any]) -> None:
    rubric = checks.load_rubric()
    current = {cid: spec.points for cid, spec in rubric.checks.items()}
    for rates in (measured["checks"], *measured["checks_by_corpus"].values()):
        recorded = {cid: r["points"] for cid, r in rates.items()}
        assert recorded == current, "the rubric's points changed since the calibration: rerun `python -m reference calibrate`"


def test_the_corpus_has_correct_and_wrong_variants_for_every_check_with_points() -> None:
    rubric = checks.load_rubric()
    labels = [corpus.expected(v) for v in corpus.variants()]
    for cid, spec in rubric.checks.items():
        if spec.points:
            verdicts = {lab[cid] for lab in labels}
            assert {True, False} <= verdicts, f"the corpus never asks {cid} for both verdicts"


def test_the_distributed_code_and_a_missing_model_are_labelled_fail() -> None:
    crash = corpus.Variant("crash", (corpus.CRASH,), ("cnn.l1", "cnn.l2"))
    labels = corpus.expected(crash)
    assert labels["recap.runs"] is False
    assert labels["recap.l1_regularizer"] is False and labels["recap.l1_mse"] is False
    assert labels["cnn.l1_regularizer"] is True and labels["cnn.l1_sparsity"] is True


def test_an_mlp_is_not_an_answer_to_the_cnn_checks() -> None:
    labels = corpus.expected(corpus.Variant("mlp", ("recap.l1", "recap.l2"), ("cnn.l1_mlp", "cnn.l2_mlp")))
    assert labels["cnn.l1_regularizer"] is False and labels["cnn.l2_accuracy"] is False
    assert labels["recap.l1_regularizer"] is True


def test_every_variant_is_distinct_and_every_spec_is_used() -> None:
    vs = corpus.variants()
    assert len({(v.recap, v.practice) for v in vs}) == len(vs)
    used = {name for v in vs for name in v.recap + v.practice}
    assert set(corpus.SPECS) <= used


def test_family_notebooks_place_each_spec_in_its_own_cell() -> None:
    for fam in corpus.families():
        for name, index in fam.cell_of.items():
            cell = fam.notebook.cells[index]
            assert cell.cell_type == "code"
            if name in corpus.SPECS:
                assert cell.source == corpus.SPECS[name].code


def test_composed_evidence_keeps_the_variants_cells_and_models_in_slot_order() -> None:
    from grader.records import CellOutcome, Evidence, ModelEvidence

    fams = corpus.families()

    def model(cell: int) -> ModelEvidence:
        return ModelEvidence(
            key=f"model{cell}", fit_index=cell, fit_indices=[cell], cell=cell, dataset="x", data_verified=True,
            data_note="", train_rows=1, leaked_test_rows=0, scaling="", facts=None, metric_name="",
            metric=None, metric_error="", train_seconds=0.0, epochs=1, history={},
        )

    evs = {}
    for fam in fams:
        idx = [i for i, c in enumerate(fam.notebook.cells) if c.cell_type == "code"]
        evs[fam.name] = Evidence(
            status="completed", reason="", cells=[CellOutcome(i, "ok", 0.0, "recap") for i in idx],
            models=[model(i) for i in sorted(set(idx) - set(fam.setup))], evaluations=[], printed=[],
            neutralised=[], timings={},
        )
    home = corpus.home(fams)
    v = corpus.Variant("v", ("recap.l2", "recap.l1"), ("cnn.l2_mlp", "cnn.l1"))
    ev = calibrate.compose(v, evs, fams)
    assert [m.cell for m in ev.models] == [home[n].cell_of[n] for n in v.recap + v.practice]
    assert len({m.key for m in ev.models}) == 4
    # set-up cells and the variant's own cells, nothing else
    assert len(ev.cells) == 1 + 2 + len({home[n].name for n in v.practice}) + 2


def test_a_pattern_variant_expects_only_the_checks_its_truths_decide() -> None:
    metric_checks = {cid for cid in checks.CHECK_IDS if cid.endswith(("_mse", "_accuracy", "_sparsity"))}
    for p in patterns.PATTERNS:
        labels = patterns.expected(p)
        assert set(labels) == set(checks.CHECK_IDS)
        decided = {cid for cid, verdict in labels.items() if verdict is not None}
        part = "recap" if p.dataset == "boston" else "cnn"
        assert decided == {f"{part}.l1_regularizer", f"{part}.l2_regularizer", "integrity.no_test_leakage"}, p.name
        assert not decided & metric_checks, p.name  # 1-2 epochs: the metrics decide nothing
        for kind in ("l1", "l2"):  # pass exactly when that kind, and only it, was really trained
            assert labels[f"{part}.{kind}_regularizer"] is (p.penalty == kind), p.name
        assert labels["integrity.no_test_leakage"] is (not p.leaks), p.name
    # the truth is the penalty trained, not the one written: set on built layers, it trains nothing
    late = patterns.expected(patterns.BY_NAME["rebuild.cnn_set_after_compile_l1"])
    assert late["cnn.l1_regularizer"] is False and late["cnn.l2_regularizer"] is False
    assert patterns.expected(patterns.BY_NAME["rebuild.cnn_clone_model_l1"])["cnn.l1_regularizer"] is True
    both = patterns.expected(patterns.BY_NAME["training.generator_l1_l2"])
    assert both["cnn.l1_regularizer"] is False and both["cnn.l2_regularizer"] is False
    leaky = patterns.expected(patterns.BY_NAME["integrity.recap_train_plus_test_dataset_l2"])
    assert leaky["recap.l2_regularizer"] is True and leaky["integrity.no_test_leakage"] is False
    assert leaky["cnn.l2_regularizer"] is None and leaky["recap.l2_mse"] is None


def test_the_pattern_corpus_asks_both_verdicts_of_every_check_it_decides() -> None:
    for cid in ("recap.l1_regularizer", "recap.l2_regularizer", "cnn.l1_regularizer", "cnn.l2_regularizer",
                "integrity.no_test_leakage"):
        verdicts = {patterns.expected(p)[cid] for p in patterns.PATTERNS} - {None}
        assert verdicts == {True, False}, cid


def _synthetic(fam_cells: dict[str, list[int]], setup: dict[str, tuple[int, ...]]) -> dict[str, Evidence]:
    """Job name -> evidence with every code cell run and one model trained by each non-set-up cell."""

    def model(cell: int) -> ModelEvidence:
        return ModelEvidence(
            key=f"model{cell}", fit_index=cell, fit_indices=[cell], cell=cell, dataset="x", data_verified=True,
            data_note="", train_rows=1, leaked_test_rows=0, scaling="", facts=None, metric_name="",
            metric=None, metric_error="", train_seconds=0.0, epochs=1, history={},
        )

    return {
        name: Evidence(
            status="completed", reason="", cells=[CellOutcome(i, "ok", 0.0, "recap") for i in idx],
            models=[model(i) for i in sorted(set(idx) - set(setup[name]))], evaluations=[], printed=[],
            neutralised=[], timings={},
        )
        for name, idx in fam_cells.items()
    }


def test_a_pattern_is_graded_as_its_set_up_cell_and_its_own_cell() -> None:
    fams = patterns.families()
    cells = {calibrate.pattern_job(f): [i for i, c in enumerate(f.notebook.cells) if c.cell_type == "code"] for f in fams}
    evs = _synthetic(cells, {calibrate.pattern_job(f): f.setup for f in fams})
    assert not set(evs) & {f.name for f in corpus.families()}  # no pattern job shares a variant family's name
    for p in (patterns.BY_NAME["recap.dataset_l1"], patterns.BY_NAME["training.tape_eager_l1"]):
        fam = next(f for f in fams if p.name in f.cell_of)
        ev = calibrate.compose_pattern(p, evs, fams)
        assert [c.index for c in ev.cells] == [*fam.setup, fam.cell_of[p.name]]
        assert [m.cell for m in ev.models] == [fam.cell_of[p.name]]
        assert ev.models[0].key.startswith(calibrate.PATTERN_JOB_PREFIX)


def test_tallies_add_up() -> None:
    a, b = calibrate.Tally(), calibrate.Tally()
    a.add(True, False)
    a.add(None, True)
    b.add(False, True)
    b.add(True, True)
    total = a + b
    assert (total.should_pass, total.false_fail, total.should_fail, total.false_pass, total.unlabelled) == (2, 1, 1, 1, 1)


def test_family_notebooks_are_the_same_bytes_each_time_they_are_built() -> None:
    """``calibrate --work`` reuses an execution whose notebook bytes are unchanged: ids must not be drawn."""
    for build in (corpus.families, patterns.families):
        first, again = build(), build()
        assert [nbformat.writes(f.notebook) for f in first] == [nbformat.writes(f.notebook) for f in again]
