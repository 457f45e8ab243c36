"""The evidence of a finished run, assembled in the orchestrator from what the runner left in the job
dir (``grader/runner/files.py``), the provenance matches of its recorded arrays (``matching.py``) and
the evaluator's facts about each model; each model's metric is scored here on the canonical labels.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from grader import submissions
from grader.evaluator.inputs import TRAIN_PROBE_ROWS, CanonicalInputs
from grader.judging import penalties, provenance
from grader.judging.matching import Matches
from grader.records import (
    PARTS,
    CellOutcome,
    CellStatus,
    EvaluateRecord,
    EvaluationEvidence,
    Evidence,
    FitRecord,
    ModelEvidence,
    ModelFacts,
    Part,
    from_jsonable,
)
from grader.runner.files import JobFiles

# Each fit's model facts, given the fit and its input spec; adds the evaluator's CPU seconds to the timings.
FactsOf = Callable[[list[tuple[FitRecord, dict[str, Any] | None]], dict[str, float]], dict[int, ModelFacts]]


def assemble(
    job_dir: Path,
    neutralised: list[str],
    prepared: Any,
    parts: list[Part],
    kill_status: str,
    kill_reason: str,
    *,
    matches: Matches,
    inputs: CanonicalInputs,
    facts: FactsOf,
) -> Evidence:
    """The evidence of a finished run: ``prepared`` is the notebook as executed, ``parts`` its cells' parts,
    ``kill_status`` and ``kill_reason`` why the runner was stopped (empty when it ended by itself), and
    ``facts`` asks the evaluator about the models (``grader/evaluator/schedule.py: FinalRound``)."""
    job = JobFiles(job_dir)
    run = job.run_record()
    cells = [from_jsonable(CellOutcome, c) for c in run.get("cells", [])]
    status, reason = run.get("status", "error"), run.get("reason", "")
    if kill_status:
        status, reason = kill_status, kill_reason
        ran = {c.index for c in cells}
        cell_status: CellStatus = "deadline" if kill_status == "timeout" else "unknown"
        ename = "NotebookDeadline" if kill_status == "timeout" else "RunnerFailed"
        cells += [
            CellOutcome(i, cell_status, 0.0, parts[i], ename, kill_reason)
            for i, cell in enumerate(prepared.cells)
            if cell.cell_type == "code" and i not in ran
        ]
    elif status == "running":
        status, reason = "error", "the runner stopped before finishing (it crashed or was killed)"
    fits, evals = job.read_records()
    cell_of, printed = job.executed_cells()
    # Phase timings: the runner's (kernel start, set-up cell, student cells, the kernel's CPU
    # seconds) and the grader's own; CPU seconds of the sandboxed children where cgroups count them.
    timings = {f"runner_{k}": float(v) for k, v in run.get("timings", {}).items()}
    t0 = time.monotonic()
    models = model_evidence(job_dir, fits, cell_of, timings, evals, matches=matches, inputs=inputs, facts=facts)
    code = "\n".join(c.source for c in prepared.cells if c.cell_type == "code")
    models = [penalties.cross_check(m, code) for m in models]
    evaluations = evaluation_evidence(job_dir, evals, models, matches)
    timings["evaluation"] = time.monotonic() - t0
    timings["training"] = float(sum(m.train_seconds for m in models))
    # A cell that trained a model belongs to the part whose data it trained on, whatever its headings say.
    trained = [(cell_of.get(f.cell) if f.cell is not None else None, matches.match(job_dir, f.x).dataset) for f in fits]
    refined = submissions.refine_parts(prepared, trained)
    cells = [dataclasses.replace(c, part=refined[c.index]) if 0 <= c.index < len(refined) else c for c in cells]
    return Evidence(
        status=status,
        reason=reason,
        cells=cells,
        models=models,
        evaluations=evaluations,
        printed=printed,
        neutralised=neutralised,
        timings=timings,
        sources={
            part: "\n".join(c.source for c, p in zip(prepared.cells, parts) if c.cell_type == "code" and p == part)
            for part in PARTS
        },
    )


def model_evidence(
    job_dir: Path,
    fits: list[FitRecord],
    cell_of: dict[int, int],
    timings: dict[str, float],
    evals: list[EvaluateRecord],
    *,
    matches: Matches,
    inputs: CanonicalInputs,
    facts: FactsOf,
) -> list[ModelEvidence]:
    """One entry per model, judged on its latest fit; ``cell_of``: kernel execution count -> cell index."""
    last: dict[str, FitRecord] = {}
    all_fits: dict[str, list[FitRecord]] = {}
    for fit in fits:
        last[fit.model_key] = fit
        all_fits.setdefault(fit.model_key, []).append(fit)
    ordered = sorted(last.values(), key=lambda f: f.index)
    matched = {f.index: matches.match(job_dir, f.x) for f in ordered}
    # Leakage is judged over every fit of a model, not only its last.
    leaks = {key: max(matches.leaked_rows(job_dir, f, matched) for f in fs) for key, fs in all_fits.items()}
    entries = []
    for fit in ordered:
        match = matched[fit.index]
        prepared, prepared_from = matches.preparation(job_dir, fit, evals)
        spec = inputs.spec(job_dir, prepared)
        label_map: tuple[float, float] | None = (1.0, 0.0)
        if match.verified and match.dataset == "boston":
            y_samples = JobFiles(job_dir).samples(fit.y)
            canon = matches.canonicals[match.dataset]
            if y_samples is not None:
                label_map = provenance.label_affine(y_samples, match, canon)
            elif fit.y.kind != "array":
                label_map = (1.0, 0.0)  # targets not recorded (a custom loop): taken as the prices themselves
            else:
                label_map = None
        entries.append((fit, match, spec, label_map, prepared, prepared_from))
    got = facts([(fit, spec) for fit, _, spec, *_ in entries], timings)
    out = []
    for fit, match, spec, label_map, prepared, prepared_from in entries:
        cell = cell_of.get(fit.cell) if fit.cell is not None else None
        f, untrained, judged_by = penalties.apply_measured(got.get(fit.index), fit, cell)
        if judged_by == "declared":
            f, untrained = _trained_facts(f, fit)
        metric, metric_name, error = None, "", ""
        if match.dataset in matches.canonicals:
            metric_name = "mse" if match.dataset == "boston" else "accuracy"
        if spec is None:
            error = (
                f"the data it was trained on could not be matched to the canonical data as the grader can prepare it ({match.note})"
                if match.note
                else "the data it was trained on is not the exercise's data"
            )
        elif f is None or not f.loaded:
            error = f"the saved model could not be reloaded ({f.load_error if f else 'not evaluated'})"
        elif f.predictions_file is None:
            error = f"the model could not predict on the test inputs ({f.prediction_error})"
        else:
            metric, error = score(job_dir / f.predictions_file, matches.canonicals, match.dataset, label_map)
        drawn = not match.verified and matches.drawn_from_verified(job_dir, fit, match)
        train_metric = None
        if metric is not None and f is not None and f.train_predictions_file:
            train_metric, _ = score(job_dir / f.train_predictions_file, matches.canonicals, match.dataset, label_map, split="train")
        out.append(
            ModelEvidence(
                key=fit.model_key,
                fit_index=fit.index,
                fit_indices=[x.index for x in all_fits[fit.model_key]],
                cell=cell,
                dataset=match.dataset,
                data_verified=match.verified or drawn,
                data_note=match.note
                if match.verified or not drawn
                else f"its batches were augmented beyond recognition ({match.note}); the arrays they were drawn "
                f"from are {match.dataset} rows",
                train_rows=match.rows,
                leaked_test_rows=leaks.get(fit.model_key, 0),
                scaling=describe_scaling(prepared)
                + (f" (learnt from {prepared_from})" if prepared_from != "training data" else ""),
                facts=f,
                metric_name=metric_name,
                metric=metric,
                metric_error=error,
                train_seconds=float(sum(x.train_seconds for x in all_fits[fit.model_key])),
                epochs=int(sum(x.epochs_run for x in all_fits[fit.model_key])),
                history=fit.history,
                origin=fit.origin,
                steps=int(sum(x.steps for x in all_fits[fit.model_key])),
                untrained_penalties=untrained,
                penalty_note=fit.penalty_note if untrained else "",
                prepared_from=prepared_from,
                train_metric=train_metric,
                metric_rows=metric_rows(matches.canonicals, match.dataset),
                interrupted=fit.interrupted,
                penalty_evidence=judged_by,
                notes=list(dict.fromkeys(n for x in all_fits[fit.model_key] for n in x.notes)),
            )
        )
    return out


def evaluation_evidence(
    job_dir: Path, evals: list[EvaluateRecord], models: list[ModelEvidence], matches: Matches
) -> list[EvaluationEvidence]:
    """One entry per ``evaluate`` call the notebook made, with the grader's own metric where it was on the test set."""
    by_key = {m.key: m for m in models}
    out = []
    for e in evals:
        model = by_key.get(e.model_key)
        match = matches.match(job_dir, e.x)
        canon = matches.canonicals.get(match.dataset)
        on_test = bool(
            match.verified and canon is not None and match.distinct_test_rows == len(canon.x_test) == match.rows
        )
        recomputed = model.metric if model is not None and on_test else None
        out.append(
            EvaluationEvidence(
                index=e.index,
                model_key=e.model_key,
                on_test_set=on_test,
                returned=e.returned,
                metric_name=model.metric_name if model else "",
                recomputed=recomputed,
                returned_names=list(e.metric_names),
            )
        )
    return out


def score(
    pred_path: Path,
    canonicals: dict[str, provenance.Canonical],
    dataset: str,
    label_map: tuple[float, float] | None,
    split: str = "test",
) -> tuple[float | None, str]:
    """A model's metric from its predictions on the canonical inputs (``split``: "test", or "train" for the
    first ``TRAIN_PROBE_ROWS`` training rows): MSE in Boston prices, or CIFAR-10 accuracy; or why not."""
    try:
        preds = np.load(pred_path, allow_pickle=False).astype(np.float64)
    except (ValueError, OSError) as exc:
        return None, f"the predictions could not be read ({exc})"
    canon = canonicals[dataset]
    y = canon.y_test if split == "test" else canon.y_train[:TRAIN_PROBE_ROWS]
    if preds.shape[0] != len(y):
        return None, f"{preds.shape[0]} predictions for {len(y)} test examples"
    if dataset == "boston":
        if label_map is None:
            return None, "the targets you trained on could not be matched to the Boston prices (MEDV)"
        flat = preds.reshape(len(y), -1)
        if flat.shape[1] != 1:
            return None, f"the model outputs {flat.shape[1]} values per house; one price was expected"
        a, b = label_map
        prices = (flat[:, 0] - b) / a
        return float(np.mean((prices - y) ** 2)), ""
    flat = preds.reshape(len(y), -1)
    if flat.shape[1] < 10:
        return None, f"the model outputs {flat.shape[1]} values per image; 10 class scores were expected"
    return float(np.mean(np.argmax(flat, axis=1) == y.astype(int))), ""


def metric_rows(canonicals: dict[str, provenance.Canonical], dataset: str) -> list[int]:
    """The rows a model's metrics are computed on: its test rows, and its training probe rows."""
    canon = canonicals.get(dataset)
    return [len(canon.x_test), min(TRAIN_PROBE_ROWS, len(canon.x_train))] if canon is not None else [0, 0]


def describe_scaling(match: provenance.DataMatch) -> str:
    if not match.verified:
        return "unverified"
    scale = np.asarray(match.scale)
    shift = np.asarray(match.shift)
    if match.mode != "channel":
        words = provenance.MODE_WORDS.get(match.mode, match.mode)
    elif np.allclose(scale, 1) and np.allclose(shift, 0):
        words = "raw values"
    elif np.allclose(scale, 1 / 255, rtol=1e-3) and np.allclose(shift, 0, atol=1e-6):
        words = "divided by 255"
    else:
        words = "rescaled per feature (x * scale + shift)"
    if match.mirrored_rows:
        words += f"; {match.mirrored_rows} rows mirrored"
    if match.augmented:
        words += "; augmented (the rows found exactly decide the preparation)"
    return words


def _trained_facts(facts: ModelFacts | None, fit: FitRecord) -> tuple[ModelFacts | None, list[str]]:
    """The model's facts with only the kernel penalties its training loss included, and the layers whose
    saved ``kernel_regularizer`` was not trained (set on a layer already built, or a loop that never added
    ``model.losses``). The kernel's record can only take a penalty away, never add one."""
    trained = fit.trained_penalties
    if facts is None or trained is None:
        return facts, []
    by_name: dict[str, list[Any]] = {}
    for key, value in trained.items():
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(value)
    layers, dropped = [], []
    for layer in facts.layers:
        key = layer.path or layer.name
        if layer.kernel_regularizer is None:
            layers.append(layer)
            continue
        if key in trained:
            values = [trained[key]]
        else:
            values = by_name.get(key.rsplit("/", 1)[-1], by_name.get(layer.name, []))
        if values and all(v is None for v in values):
            layers.append(dataclasses.replace(layer, kernel_regularizer=None))
            dropped.append(layer.name)
        else:
            layers.append(layer)
    return (dataclasses.replace(facts, layers=layers) if dropped else facts), dropped
