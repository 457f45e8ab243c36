"""The rubric follows the measured error rates, and the corpus's labels follow its specs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from grader import checks
from reference import calibrate, corpus

MEASURED = calibrate.CALIBRATION / "smoke.json"


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    return json.loads(MEASURED.read_text())


def test_the_calibration_was_measured_on_enough_gradings(measured: dict[str, Any]) -> None:
    assert measured["profile"] == "smoke"
    assert measured["gradings"] >= calibrate.MIN_GRADINGS
    assert set(measured["checks"]) == set(checks.CHECK_IDS)


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
    recorded = {cid: r["points"] for cid, r in measured["checks"].items()}
    assert recorded == {cid: spec.points for cid, spec in rubric.checks.items()}, (
        "the rubric's points changed since the calibration: rerun `python -m reference calibrate`"
    )


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
