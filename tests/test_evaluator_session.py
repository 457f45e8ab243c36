"""The evaluator started with the notebook: early answers are kept only while they still describe the final files.

These tests drive ``Evaluators.facts`` (grader/evaluator/schedule.py) and ``evaluate.Session``
directly on small saved Keras models (no notebook runs): a request answered "early" (as while a
kernel still runs) is reused when the model file is unchanged, evaluated again when the file changed after its answer, and artifacts that
could stall or fool the evaluator (a FIFO, a symbolic link) are refused with a reason.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from builders import save_dense  # noqa: E402

from grader.evaluator import evaluate, protocol  # noqa: E402
from grader.grade import Grader  # noqa: E402
from grader.records import ModelFacts  # noqa: E402


def request(job_dir: Path, name: str = "fit001.keras") -> dict[str, Any]:
    return {
        "fit_index": 1,
        "artifact": str((job_dir / "artifacts" / "models" / name).resolve()),
        "format": "keras",
        "facts_file": None,
        "input": None,
    }


def answer_early(grader: Grader, job_dir: Path, entry: dict[str, Any]) -> tuple[Any, int]:
    """Start the evaluator as ``collect`` does and have ``entry`` answered before the final round."""
    session = grader.evaluators.start(job_dir, timeout=300, background=True)
    rid = session.submit(entry)
    assert session.wait_answer(rid, time.monotonic() + 240) is not None, (job_dir / "eval" / "evaluator.log").read_text()
    return session, rid


def final_round(grader: Grader, job_dir: Path, session: Any, entry: dict[str, Any], rid: int) -> ModelFacts:
    try:
        facts = grader.evaluators.facts(job_dir, [(1, entry)], {}, session, {1: rid})
    finally:
        session.kill()
    return facts[1]


def test_an_early_answer_is_reused_when_the_model_file_is_unchanged(grader: Grader, job_dir: Path) -> None:
    save_dense(job_dir / "artifacts" / "models" / "fit001.keras", 0.0)
    entry = request(job_dir)
    session, rid = answer_early(grader, job_dir, entry)

    facts = final_round(grader, job_dir, session, entry, rid)

    assert facts.loaded and facts.near_zero["0.001"] == 1.0
    assert sorted(p.name for p in (job_dir / "eval" / "requests").glob("*.json")) == ["0001.json"]
    assert json.loads((job_dir / "eval" / "evaluation.json").read_text())["reused_early"] == 1
    assert not session.run.running(), "once every answer is in, the evaluator is stopped"


def test_the_evaluator_exits_by_itself_once_told_no_more_requests_come(grader: Grader, job_dir: Path) -> None:
    session = grader.evaluators.start(job_dir, timeout=300)
    try:
        outcome = session.close(240)
    finally:
        session.kill()

    assert outcome.returncode == 0, (job_dir / "eval" / "evaluator.log").read_text()[-2000:]


def test_a_model_file_rewritten_after_its_early_answer_is_evaluated_again(grader: Grader, job_dir: Path) -> None:
    artifact = job_dir / "artifacts" / "models" / "fit001.keras"
    save_dense(artifact, 0.0)
    entry = request(job_dir)
    session, rid = answer_early(grader, job_dir, entry)
    save_dense(artifact, 1.0)  # what a notebook could do after its model was evaluated early

    facts = final_round(grader, job_dir, session, entry, rid)

    assert facts.loaded and facts.near_zero["0.001"] == 0.0, "the grade must come from the file as the notebook left it"
    assert sorted(p.name for p in (job_dir / "eval" / "requests").glob("*.json")) == ["0001.json", "0002.json"]
    assert json.loads((job_dir / "eval" / "evaluation.json").read_text())["reused_early"] == 0


def test_a_fifo_or_symbolic_link_in_place_of_a_model_is_refused_without_stalling(grader: Grader, job_dir: Path) -> None:
    models = job_dir / "artifacts" / "models"
    os.mkfifo(models / "fit001.keras")  # opening it for reading would block until a writer came
    save_dense(models / "real.keras", 0.0)
    (models / "fit002.keras").symlink_to(models / "real.keras")
    session = grader.evaluators.start(job_dir, timeout=300)
    try:
        started = time.monotonic()
        facts = grader.evaluators.facts(
            job_dir,
            # The grader resolves artifact paths before asking; the evaluator refuses a link all the same.
            [(1, request(job_dir, "fit001.keras")), (2, {**request(job_dir), "artifact": str(models / "fit002.keras"), "fit_index": 2})],
            {}, session, {},
        )
    finally:
        session.kill()

    assert time.monotonic() - started < 120
    assert not facts[1].loaded and "other than regular files" in facts[1].load_error
    assert not facts[2].loaded and "symbolic link" in facts[2].load_error


def test_a_model_whose_config_names_arbitrary_callables_is_refused_and_runs_nothing(grader: Grader, job_dir: Path) -> None:
    import zipfile

    artifact = job_dir / "artifacts" / "models" / "fit001.keras"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(artifact)
    with zipfile.ZipFile(artifact) as z:
        config = json.loads(z.read("config.json"))
        parts = {name: z.read(name) for name in z.namelist() if name != "config.json"}
    marker = job_dir / "eval" / "CRAFTED_RAN"
    config["config"]["layers"] = [
        config["config"]["layers"][0],
        {"module": "os", "class_name": "system", "config": {"command": f"touch {marker}"}, "registered_name": None},
        {"module": "subprocess", "class_name": "Popen", "config": {"args": ["touch", str(marker)]}, "registered_name": None},
    ]
    with zipfile.ZipFile(artifact, "w") as z:
        z.writestr("config.json", json.dumps(config))
        for name, data in parts.items():
            z.writestr(name, data)
    session = grader.evaluators.start(job_dir, timeout=300)
    try:
        facts = grader.evaluators.facts(job_dir, [(1, request(job_dir))], {}, session, {})
    finally:
        session.kill()

    assert not facts[1].loaded and "could not be deserialized" in facts[1].load_error, facts[1].load_error
    assert not marker.exists()


def test_artifact_digest_changes_with_the_bytes_and_is_empty_for_links(tmp_path: Path) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"one")
    first = protocol.artifact_digest(model)
    model.write_bytes(b"two")
    (tmp_path / "link.keras").symlink_to(model)
    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "v.data").write_bytes(np.arange(3).tobytes())

    assert first and protocol.artifact_digest(model) not in ("", first)
    assert protocol.artifact_digest(tmp_path / "link.keras") == ""
    assert protocol.artifact_digest(folder) != ""
    (folder / "variables" / "alias").symlink_to(folder / "variables" / "v.data")
    assert protocol.artifact_digest(folder) == ""


def test_a_match_made_while_the_notebook_ran_is_reused_only_for_the_same_samples(
    grader: Grader, job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grader.judging import provenance
    from grader.records import ArrayFingerprint

    calls: list[int] = []
    real = provenance.identify_any

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(provenance, "identify_any", counted)
    samples = job_dir / "artifacts" / "samples" / "fit001_x.npy"
    samples.parent.mkdir(parents=True)
    np.save(samples, np.arange(12, dtype=np.float64).reshape(4, 3))
    fp = ArrayFingerprint(kind="array", shape=[4, 3], dtype="float64", sha256="ab", sample_positions=[0, 1, 2],
                          samples_file="samples/fit001_x.npy")
    first = grader.matches.match(job_dir, fp)
    assert grader.matches.match(job_dir, fp) is first and len(calls) == 1  # same fingerprint, same samples: reused
    np.save(samples, np.arange(12, dtype=np.float64).reshape(4, 3) + 1.0)  # the kernel rewrote its samples
    grader.matches.match(job_dir, fp)
    assert len(calls) == 2


def test_when_the_evaluator_died_during_the_notebook_a_fresh_one_answers_at_normal_priority(
    grader: Grader, job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_dense(job_dir / "artifacts" / "models" / "fit001.keras", 0.5)
    entry = request(job_dir)
    session = grader.evaluators.start(job_dir, timeout=300, background=True)
    rid = session.submit(entry)
    session.kill()  # gone before answering, as if the early request had crashed it
    started: list[bool] = []
    real = evaluate.Session

    class Recorded(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(bool(kwargs.get("background", True)))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(evaluate, "Session", Recorded)
    facts = grader.evaluators.facts(job_dir, [(1, entry)], {}, session, {1: rid})

    assert started == [False]  # one retry, not lowered: the notebook is over and the grade waits for it
    assert facts[1].loaded and facts[1].near_zero
    saved = json.loads((job_dir / "eval-retry" / "evaluation.json").read_text())
    assert saved["reused_early"] == 0
