"""The live line shown while a notebook runs reads the runner's files and never fails."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from grader.plugin import live_status


def test_the_live_line_counts_cells_run_and_fits_recorded(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# x")] + [nbformat.v4.new_code_cell("1") for _ in range(4)]
    nbformat.write(nb, str(tmp_path / "input.ipynb"))
    (tmp_path / "cells.json").write_text(json.dumps({"status": "running", "cells": [{}, {}]}))
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "records.jsonl").write_text(
        json.dumps({"type": "fit"}) + "\n" + json.dumps({"type": "evaluate"}) + "\n" + "{half a line"
    )

    assert live_status(tmp_path, "alice", 12.4) == "grading alice: 2/4 cells run, 1 fit(s) recorded, 12 s"


def test_the_live_line_of_a_job_not_started_yet_says_so(tmp_path: Path) -> None:
    assert live_status(tmp_path / "missing", "bob", 0.0) == "grading bob: starting, 0 fit(s) recorded, 0 s"


def test_the_live_line_shows_the_epoch_of_the_fit_still_running(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "records.jsonl").write_text(json.dumps({"type": "fit"}) + "\n")
    progress = tmp_path / "artifacts" / "progress.json"
    progress.write_text(json.dumps({"fit": 2, "epoch": 4, "epochs": 10}))

    assert live_status(tmp_path, "carol", 30.0) == "grading carol: starting, 1 fit(s) recorded, training fit 2: epoch 4/10, 30 s"
    progress.write_text(json.dumps({"fit": 1, "epoch": 10, "epochs": 10}))  # that fit is recorded: finished
    assert live_status(tmp_path, "carol", 31.0) == "grading carol: starting, 1 fit(s) recorded, 31 s"
