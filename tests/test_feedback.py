"""Tests of the feedback pages (grader/reports/student_page.py: feedback.html; class_page.py: index.html; their
figures and shared views), of the Gradescope leaderboard entries (grader/reports/report.py) and of the self-check
command ``python -m grader`` (its usage errors, and its output with the grader replaced by a stub).

Fast: evidence is built by hand, nothing is executed. Nothing is written into the repository.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import html.parser
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import markupsafe
import numpy as np
import pytest

from grader.evaluator.inspect import abs_histogram, near_zero_fractions
from grader.judging import checks
from grader.records import (
    CellOutcome,
    Evidence,
    LayerFacts,
    ModelEvidence,
    ModelFacts,
    RegularizerFacts,
    SubmissionResult,
    write_json_atomic,
)
from grader.reports import class_page, drawing, report, student_page, views

REPO = Path(__file__).resolve().parent.parent
TINY_BASELINE = REPO / "reference" / "baselines" / "tiny.json"
SCRIPT_MESSAGE = "Your model printed <script>alert('x')</script> & more"
THRESHOLD = "0.001"


# ------------------------------------------------------------------------------------------------
# Hand-built records
# ------------------------------------------------------------------------------------------------


def _kernels(kind: str, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.05, size=shape)
    if kind == "l1":  # most weights pushed near zero
        w = np.where(rng.random(shape) < 0.8, w * 1e-4, w)
    return [w]


def facts(index: int, kind: str, conv: bool, seed: int) -> ModelFacts:
    reg = RegularizerFacts(kind, 1e-4 if kind == "l1" else 0.0, 1e-4 if kind == "l2" else 0.0, kind.upper())
    if conv:
        layers = [
            LayerFacts("conv2d", "Conv2D", True, True, 864, reg, None, None),
            LayerFacts("max_pooling2d", "MaxPooling2D", False, False, 0, None, None, None),
            LayerFacts("flatten", "Flatten", False, False, 0, None, None, None),
            LayerFacts("dense", "Dense", False, True, 1000, reg, None, None),
        ]
        arrays = _kernels(kind, (3, 3, 3, 32), seed) + _kernels(kind, (100, 10), seed + 1)
    else:
        layers = [
            LayerFacts("dense", "Dense", False, True, 130, reg, None, None),
            LayerFacts("dense_1", "Dense", False, True, 10, reg, None, None),
        ]
        arrays = _kernels(kind, (13, 10), seed) + _kernels(kind, (10, 1), seed + 1)
    return ModelFacts(
        fit_index=index,
        loaded=True,
        load_error="",
        source="keras",
        layers=layers,
        kernel_params=int(sum(a.size for a in arrays)),
        near_zero=near_zero_fractions(arrays),
        abs_weight_histogram=abs_histogram(arrays),
        predictions_file=f"pred_{index:03d}.npy",
        prediction_error="",
    )


def model(index: int, dataset: str, kind: str, metric: float, seconds: float, epochs: int = 10) -> ModelEvidence:
    conv = dataset == "cifar10"
    if conv:
        history = {
            "loss": [2.1 - 0.1 * i for i in range(epochs)],
            "accuracy": [0.2 + 0.02 * i for i in range(epochs)],
            "val_loss": [2.0 - 0.08 * i for i in range(epochs)],
            "val_accuracy": [0.22 + 0.015 * i for i in range(epochs)],
        }
    else:
        history = {
            "loss": [600.0 / (i + 1) for i in range(epochs)],
            "mae": [20.0 / (i + 1) ** 0.5 for i in range(epochs)],
        }
    return ModelEvidence(
        key=f"m{index}",
        fit_index=index,
        fit_indices=[index],
        cell=3 + index,
        dataset=dataset,
        data_verified=True,
        data_note="",
        train_rows=404 if not conv else 1000,
        leaked_test_rows=0,
        scaling="divided by 255" if conv else "raw values",
        facts=facts(index, kind, conv, seed=index),
        metric_name="accuracy" if conv else "mse",
        metric=metric,
        metric_error="",
        train_seconds=seconds,
        epochs=epochs,
        history=history,
    )


def evidence(with_cnn_l2: bool = True, cnn_l1_acc: float = 0.41, cnn_l1_secs: float = 15.0) -> Evidence:
    models = [
        model(0, "boston", "l1", 90.0, 20.0, epochs=30),
        model(1, "boston", "l2", 40.0, 22.0, epochs=30),
        model(2, "cifar10", "l1", cnn_l1_acc, cnn_l1_secs),
    ]
    if with_cnn_l2:
        models.append(model(3, "cifar10", "l2", 0.39, 12.0))
    cells = [
        CellOutcome(0, "ok", 1.0, "recap"),
        CellOutcome(
            1,
            "error",
            0.2,
            "recap",
            "NameError",
            "name 'y' is not defined <img src=x onerror=alert(1)>",
            "\x1b[0;31mNameError\x1b[0m Traceback (most recent call last)\nCell In[2], line 1\n----> 1 y_train = y[:10]\n"
            + "".join(f"  frame {i}: a long line {'x' * 200}\n" for i in range(60))
            + "NameError: name 'y' is not defined",
        ),
        CellOutcome(2, "ok", 30.0, "cnn"),
    ]
    return Evidence(
        status="completed",
        reason="",
        cells=cells,
        models=models,
        evaluations=[],
        printed=[],
        neutralised=["!pip install tensorflow"],
        timings={"execute": 100.0},
    )


def baseline(with_histograms: bool) -> dict[str, Any]:
    data = json.loads(TINY_BASELINE.read_text())
    data = copy.deepcopy(data)
    if with_histograms:
        data["histograms"] = {
            "seed": 0,
            "recap.l1": facts(10, "l1", False, 99).abs_weight_histogram,
            "recap.l2": facts(11, "l2", False, 98).abs_weight_histogram,
            "cnn.l1": facts(12, "l1", True, 97).abs_weight_histogram,
            "cnn.l2": facts(13, "l2", True, 96).abs_weight_histogram,
        }
    else:
        data.pop("histograms", None)
    return data


def bounds(base: dict[str, Any]) -> checks.Bounds:
    return checks.bounds_from_baseline(base, checks.load_rubric())


def submission(
    key: str, ev: Evidence | None, base: dict[str, Any], status: str = "graded", reason: str = ""
) -> SubmissionResult:
    rubric = checks.load_rubric()
    if ev is None:
        results = checks.failed_all(rubric, reason)
    else:
        results = checks.run_checks(ev, rubric, bounds(base))
        results[0] = dataclasses.replace(results[0], message=SCRIPT_MESSAGE)
    return SubmissionResult(
        key=key,
        source=f"submissions/{key}.ipynb",
        status=status,
        reason=reason,
        score=float(sum(c.score for c in results)),
        max_score=rubric.max_score,
        checks=results,
        execution_time=95.0,
        timings={},
        grader_version="0.1.0",
        profile="tiny",
        seed=0,
    )


def build_class(out: Path, with_histograms: bool = True) -> tuple[dict[str, Path], dict[str, SubmissionResult]]:
    """A class of three (complete, missing the L2 CNN, invalid): their pages, the index, and their results."""
    base = baseline(with_histograms)
    evs: dict[str, Evidence | None] = {
        "alice": evidence(),
        "bob": evidence(with_cnn_l2=False, cnn_l1_acc=0.45, cnn_l1_secs=30.0),
        "carol": None,
    }
    results = [
        submission("alice", evs["alice"], base),
        submission("bob", evs["bob"], base),
        submission("carol", None, base, status="invalid", reason="Invalid submission: the file is empty (0 bytes)."),
    ]
    pages = {r.key: student_page.write_feedback(out, r, evs[r.key], base, bounds(base)) for r in results}
    pages["index"] = class_page.write_index(out, results, evs, base)
    return pages, {r.key: r for r in results}


def build_pages(out: Path, with_histograms: bool = True) -> dict[str, Path]:
    """The class's pages by key, and ``index``. Also used by test_browser.py."""
    return build_class(out, with_histograms)[0]


# ------------------------------------------------------------------------------------------------
# HTML inspection
# ------------------------------------------------------------------------------------------------


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        for name in ("src", "href", "srcset", "data", "action", "poster"):
            if a.get(name) is not None:
                self.refs.append((tag, name, str(a[name])))


def parse(path: Path) -> tuple[str, _Refs]:
    text = path.read_text(encoding="utf-8")
    p = _Refs()
    p.feed(text)
    return text, p


def assert_self_contained(path: Path) -> _Refs:
    text, p = parse(path)
    for tag, attr, value in p.refs:
        v = value.strip().lower()
        assert not v.startswith(("http:", "https:", "//", "ftp:", "file:")), (
            f"{path.name}: external {tag}[{attr}]={value[:80]}"
        )
        if tag == "img" or (tag == "link" and attr == "href"):
            assert v.startswith("data:"), f"{path.name}: {tag}[{attr}] is not embedded: {value[:80]}"
    assert "script" not in p.tags, f"{path.name} has a <script> element"
    assert "@import" not in text and "url(" not in text, f"{path.name}: CSS fetches something"
    for img in p.imgs:
        src = str(img.get("src"))
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
        assert img.get("alt"), "every image has alt text"
    return p


# ------------------------------------------------------------------------------------------------
# feedback.html
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def klass(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, SubmissionResult]]:
    return build_class(tmp_path_factory.mktemp("grades"))


@pytest.fixture(scope="module")
def pages(klass: tuple[dict[str, Path], dict[str, SubmissionResult]]) -> dict[str, Path]:
    return klass[0]


def test_feedback_pages_are_written_where_expected(pages: dict[str, Path]) -> None:
    root = pages["index"].parent
    assert pages["alice"] == root / "students" / "alice" / "feedback.html"
    assert pages["carol"] == root / "students" / "carol" / "feedback.html"
    assert pages["index"] == root / "index.html"
    assert not [p for p in root.rglob("*.tmp")], "temporary files are cleaned up"


@pytest.mark.parametrize("key", ["alice", "bob", "carol", "index"])
def test_pages_are_self_contained(pages: dict[str, Path], key: str) -> None:
    p = assert_self_contained(pages[key])
    if key in ("alice", "bob", "index"):
        assert p.imgs, "the page has plots"


def test_feedback_shows_score_status_and_every_check_escaped(pages: dict[str, Path]) -> None:
    text, _ = parse(pages["alice"])
    for cid in checks.CHECK_IDS:
        # Integrity checks are the instructor's (hidden in the rubric): not on the student's page.
        assert (f"<code>{cid}</code>" in text) is (not cid.startswith("integrity."))
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in text
    assert "<script>" not in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "graded</span>" in text and "points</p>" in text


@pytest.mark.parametrize("key", ["alice", "bob", "carol"])
def test_feedback_messages_are_the_check_messages(
    klass: tuple[dict[str, Path], dict[str, SubmissionResult]], key: str
) -> None:
    pages, results = klass
    r = results[key]
    text = pages[key].read_text()
    for c in r.checks:
        if c.visibility == "hidden":
            assert f"<code>{c.id}</code>" not in text, c.id
        else:
            assert str(markupsafe.escape(c.message)) in text, c.id
        assert ("PASS" if c.passed else "FAIL") in text


def test_feedback_describes_the_plots_truthfully(pages: dict[str, Path]) -> None:
    text, p = parse(pages["alice"])
    ev = evidence()
    l1 = checks.pick(checks.cnn_models(ev), "l1")
    assert l1 is not None and l1.facts is not None
    share = l1.facts.near_zero[THRESHOLD]
    alts = [str(img.get("alt")) for img in p.imgs]
    assert any(a.startswith(f"Histogram of |w| for your L1 CNN: {share:.0%} below 0.001") for a in alts), alts
    assert f"{share:.0%} of your L1 CNN&#39;s 1,864 kernel weights" in text
    # one histogram and one learning-curve figure per identified model, one metric plot per part, one time plot
    alts = [str(img.get("alt")) for img in p.imgs]
    assert sum(a.startswith("Histogram of |w|") for a in alts) == 4
    assert sum(a.startswith("Per-epoch") for a in alts) == 4
    assert any("your L1: 0.410" in a for a in alts), alts
    ref_l1_secs = statistics.median(json.loads(TINY_BASELINE.read_text())["metrics"]["cnn.l1_train_seconds"])
    assert any(f"your L1: 15.0 s; reference L1: {ref_l1_secs:.1f} s" in a for a in alts), alts
    assert "Grey: the reference L1 CNN" in text
    assert "measured on the baseline&#39;s machine (AMD EPYC, 2 cores)" in text
    assert "Code cell 1 (recap): error: NameError" in text
    assert "earlier lines not shown" in text and "\x1b" not in text


def test_missing_model_is_said_in_text_not_drawn(pages: dict[str, Path]) -> None:
    text, p = parse(pages["bob"])
    assert "No L2 CNN was identified" in text
    alts = [str(img.get("alt")) for img in p.imgs]
    assert not any("L2 CNN" in a for a in alts), alts
    assert sum(a.startswith("Histogram of |w|") for a in alts) == 3


def test_without_reference_histograms_there_is_no_shadow(tmp_path: Path) -> None:
    base = baseline(False)
    ev = evidence()
    ev = dataclasses.replace(ev, models=ev.models[:2])  # the recap models only: fewer plots, same code path
    page = student_page.write_feedback(tmp_path, submission("erin", ev, base), ev, base, bounds(base))
    text = page.read_text()
    assert "Grey: the reference" not in text
    assert text.count("The baseline has no reference histogram for this model") == 2
    assert "No L1 CNN was identified" in text and "No L2 CNN was identified" in text


def test_without_baseline_or_bounds_the_page_still_shows_the_student(tmp_path: Path) -> None:
    ev = evidence()
    ev = dataclasses.replace(ev, models=ev.models[2:])  # the CNNs only
    r = submission("frank", ev, baseline(False))
    text = student_page.write_feedback(tmp_path, r, ev, None, None).read_text()
    assert "No reference baseline was available" in text
    _, p = parse(tmp_path / "students" / "frank" / "feedback.html")
    alts = [str(img.get("alt")) for img in p.imgs]
    assert sum(a.startswith("Per-epoch") for a in alts) == 2
    assert any(a == "your L1: 15.0 s; your L2: 12.0 s" for a in alts), alts
    assert not any("reference" in a for a in alts), alts
    assert "Grey: the reference" not in text


def test_invalid_submission_gets_a_page_with_the_reason(pages: dict[str, Path]) -> None:
    text, p = parse(pages["carol"])
    assert "the file is empty (0 bytes)" in text
    assert "There are no plots: the notebook was not executed" in text
    assert "Every code cell ran" not in text and "Models the grader found" not in text
    assert not p.imgs
    assert "invalid</span>" in text


def test_diverged_history_and_unreadable_weights_are_described(tmp_path: Path) -> None:
    ev = evidence()
    l1_cnn = ev.models[2]
    assert l1_cnn.facts is not None
    bad = dataclasses.replace(
        l1_cnn,
        history={"loss": [2.0, float("nan"), float("nan")], "accuracy": [0.1, 0.1, 0.1]},
        facts=dataclasses.replace(l1_cnn.facts, abs_weight_histogram={"edges": [], "counts": []}),
    )
    ev = dataclasses.replace(ev, models=[bad])
    base = baseline(True)
    text = student_page.write_feedback(tmp_path, submission("gina", ev, base), ev, base, bounds(base)).read_text()
    assert "loss is not a finite number from epoch 2 on" in text
    assert "The weights of your L1 CNN could not be read" in text


def test_figures_drawn_in_two_processes_give_the_same_pages(tmp_path: Path) -> None:
    ev, base = evidence(), baseline(True)
    result = submission("hana", ev, base)
    one = student_page.write_feedback(tmp_path / "one", result, ev, base, bounds(base), processes=1).read_text()
    two = student_page.write_feedback(tmp_path / "two", result, ev, base, bounds(base), processes=2).read_text()
    index_one = class_page.write_index(tmp_path / "one", [result], {"hana": ev}, base, processes=1).read_text()
    index_two = class_page.write_index(tmp_path / "two", [result], {"hana": ev}, base, processes=2).read_text()

    assert one.count("data:image/png;base64,") >= 8
    assert two == one
    assert index_two == index_one


def test_a_figure_that_cannot_be_drawn_becomes_a_sentence_in_either_mode(tmp_path: Path) -> None:
    def broken() -> Any:
        raise ValueError("no axes today")

    for processes in (1, 2):
        with drawing.batch(processes) as figures:
            plots = [figures.plot("Broken", "alt", ["A note."], broken), figures.plot("Also broken", "alt", [], broken)]
        assert [p.image for p in plots] == [None, None]
        assert plots[0].notes == ["A note.", "This plot could not be drawn (ValueError: no axes today)."]


# ------------------------------------------------------------------------------------------------
# index.html
# ------------------------------------------------------------------------------------------------


def test_index_links_every_student_and_ranks_the_cnns(pages: dict[str, Path]) -> None:
    text, p = parse(pages["index"])
    links = [v for tag, attr, v in p.refs if tag == "a" and attr == "href"]
    assert {"students/alice/feedback.html", "students/bob/feedback.html", "students/carol/feedback.html"} <= set(links)
    for link in set(links):
        assert (pages["index"].parent / link).is_file(), link
    alts = [str(img.get("alt")) for img in p.imgs]
    assert any(a.startswith("Histogram of 3 scores") for a in alts)
    assert any("recap.runs:" in a and "integrity.no_test_leakage:" in a for a in alts)
    assert any(a.startswith("Scatter of 3 CNNs") for a in alts)
    board = text[text.index('id="leaderboard"') : text.index('id="students"')]
    rows = [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", board, re.S)
    ]
    rows = [r for r in rows if r]  # the header row has <th> cells only
    students = [(r[1], r[2], r[3], r[4]) for r in rows if not r[1].startswith("reference")]
    assert students == [
        ("bob", "L1", "0.450", "30.0"),
        ("alice", "L1", "0.410", "15.0"),
        ("alice", "L2", "0.390", "12.0"),
    ]
    assert [r[0] for r in rows if not r[1].startswith("reference")] == ["1", "2", "3"]
    keys = [(-float(r[3]), float(r[4])) for r in rows]
    assert keys == sorted(keys), rows
    assert sum(r[1].startswith("reference (median") for r in rows) == 2
    assert "timed on the baseline&#39;s machine (AMD EPYC, 2 cores)" in text


def test_index_ties_in_accuracy_are_broken_by_time(tmp_path: Path) -> None:
    base = baseline(False)
    evs: dict[str, Evidence | None] = {
        "slow": evidence(with_cnn_l2=False, cnn_l1_acc=0.5, cnn_l1_secs=40.0),
        "fast": evidence(with_cnn_l2=False, cnn_l1_acc=0.5, cnn_l1_secs=10.0),
    }
    results = [submission(k, ev, base) for k, ev in evs.items()]
    text = class_page.write_index(tmp_path, results, evs, base).read_text()
    assert text.index(">fast<") < text.index(">slow<")
    assert "(no page)" in text  # no feedback.html was written for them


def test_index_of_nothing_executed_says_so(tmp_path: Path) -> None:
    base = baseline(False)
    r = submission("zed", None, base, status="invalid", reason="Invalid submission: not JSON.")
    text = class_page.write_index(tmp_path, [r], {"zed": None}, base).read_text()
    assert "No submission has an identified CNN" in text


# ------------------------------------------------------------------------------------------------
# Leaderboard entries
# ------------------------------------------------------------------------------------------------


def test_leaderboard_uses_the_best_cnn_and_its_time() -> None:
    base = baseline(False)
    ev = evidence(cnn_l1_acc=0.41, cnn_l1_secs=15.0)  # L2 CNN: 0.39 in 12 s
    entries = report.leaderboard(submission("alice", ev, base), ev)
    assert entries == [
        {"name": "CNN test accuracy", "value": 0.41, "order": "desc"},
        {"name": "CNN training time (s)", "value": 15.0, "order": "asc"},
    ]
    ev2 = evidence(cnn_l1_acc=0.30)
    assert report.leaderboard(submission("bob", ev2, base), ev2)[0]["value"] == 0.39
    assert report.leaderboard(submission("bob", ev2, base), ev2)[1]["value"] == 12.0
    json.dumps(entries, allow_nan=False)


def test_leaderboard_is_empty_without_a_cnn() -> None:
    base = baseline(False)
    ev = evidence()
    no_cnn = dataclasses.replace(ev, models=ev.models[:2])
    assert report.leaderboard(submission("a", no_cnn, base), no_cnn) == []
    assert report.leaderboard(submission("b", None, base, status="invalid"), None) == []
    no_metric = dataclasses.replace(ev, models=[dataclasses.replace(m, metric=None) for m in ev.models])
    assert report.leaderboard(submission("c", no_metric, base), no_metric) == []


def test_find_evidence_reads_the_job_evidence_and_ignores_invalid(tmp_path: Path) -> None:
    base = baseline(False)
    ev = evidence()
    write_json_atomic(tmp_path / ".jobs" / "alice" / "evidence.json", ev)
    assert views.find_evidence(tmp_path, submission("alice", ev, base)) == ev
    assert views.find_evidence(tmp_path, submission("alice", None, base, status="invalid")) is None
    assert views.find_evidence(tmp_path, submission("nobody", ev, base)) is None
    (tmp_path / ".jobs" / "broken").mkdir()
    (tmp_path / ".jobs" / "broken" / "evidence.json").write_text("{not json")
    assert views.find_evidence(tmp_path, submission("broken", ev, base)) is None


def test_read_baseline(tmp_path: Path) -> None:
    assert views.read_baseline(TINY_BASELINE) == json.loads(TINY_BASELINE.read_text())
    assert views.read_baseline(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("[1, 2")
    assert views.read_baseline(tmp_path / "bad.json") is None


def test_a_grader_error_without_evidence_does_not_claim_the_notebook_never_ran(tmp_path: Path) -> None:
    base = baseline(False)
    reason = "Autograder error while grading this submission: RuntimeError: the evaluator process failed"
    r = submission("hal", None, base, status="error", reason=reason)
    text = student_page.write_feedback(tmp_path, r, None, base, bounds(base)).read_text()
    assert "the grader has no record of the models your notebook trained" in text
    assert "not executed" not in text and "RuntimeError: the evaluator process failed" in text


# ------------------------------------------------------------------------------------------------
# python -m grader (self-check)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: notebook"),
        (["missing.ipynb"], "no such file"),
        (["notes.txt"], "expected a Jupyter notebook"),
        (["nb.ipynb", "--profile", "huge"], "expected smoke, full or tiny, got 'huge'"),
        (["nb.ipynb", "--cell-timeout", "0"], "must be a number of seconds greater than 0"),
        (["nb.ipynb", "--notebook-timeout", "soon"], "expected a number of seconds"),
        (["nb.ipynb", "--seed", "-1"], "must be 0 or more"),
        (["nb.ipynb", "--data-dir", "nowhere"], "no such folder"),
        (["nb.ipynb", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["folder.ipynb"], "not a file"),
    ],
)
def test_selfcheck_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from grader.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb.ipynb").write_text("{}")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "folder.ipynb").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m grader" in err
    assert not (tmp_path / "grades-selfcheck").exists()


def test_selfcheck_runs_as_a_module_and_reports_usage_errors(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "grader", "missing.ipynb"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no such file: missing.ipynb" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("all_pass", [True, False])
def test_selfcheck_prints_checks_writes_the_page_and_sets_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], all_pass: bool
) -> None:
    import grader.grade
    from grader.__main__ import main

    base = baseline(False)
    ev = evidence()
    result = submission("homework", ev, base)
    if all_pass:
        result = dataclasses.replace(
            result, checks=[dataclasses.replace(c, passed=True, score=c.max_score) for c in result.checks]
        )

    class StubGrader:
        def __init__(self, config: grader.grade.GradingConfig) -> None:
            self.config = config
            self.bounds = bounds(base)

        def grade(self, sub: Any) -> SubmissionResult:
            assert sub.key == "homework" and sub.path == (tmp_path / "homework.ipynb").resolve()
            if not all_pass:  # the other run has no evidence: the page then has no plots (and renders faster)
                write_json_atomic(self.config.jobs_dir / sub.key / "evidence.json", ev)
            return result

    monkeypatch.setattr(grader.grade, "Grader", StubGrader)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "homework.ipynb").write_text("{}")
    code = main(["homework.ipynb", "--profile", "tiny"])
    out = capsys.readouterr().out
    assert code == (0 if all_pass else 1)
    page = tmp_path / "grades-selfcheck" / "students" / "homework" / "feedback.html"
    assert page.is_file() and str(page) in out
    for c in result.checks:
        assert (c.id in out) is (c.visibility != "hidden")
    assert f"Total: {result.score:g} / {result.max_score:g} points" in out
    assert ("FAIL" in out) is (not all(c.passed for c in result.checks))
    assert ("Histogram of |w|" in page.read_text()) is (not all_pass), "the evidence is loaded for the plots"
