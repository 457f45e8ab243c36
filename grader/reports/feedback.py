"""Feedback people want to look at: a self-contained HTML page per submission, a class index, and
Gradescope leaderboard entries.

``write_feedback`` writes ``<grades>/students/<key>/feedback.html``: the score, every check with its message,
and plots of the student's own models (weight-magnitude distributions against the reference's,
learning curves, recomputed test metrics against the reference band, CNN training time) and the
cells that failed. ``write_index`` writes ``<grades>/index.html``: score distribution, pass rate of
each check, CNN accuracy against training time for the class, a leaderboard and links to every page.

Pages are single files: images are embedded as base64 PNG, CSS is inline, nothing is fetched, and
every student-controlled string is escaped by jinja2's autoescape. Which model is "the L1 CNN" is
decided by ``grader.judging.checks`` (``pick``, ``recap_models``, ``cnn_models``), never by variable names.
Plots use matplotlib's object-oriented ``Figure`` API with the Agg renderer (no pyplot, so no
global figure registry and nothing to close); a plot that cannot be drawn becomes a sentence saying
so, never a missing page.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import dataclasses
import io
import json
import math
import re
import statistics
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import jinja2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator
from PIL import Image

from grader.judging import checks
from grader.reports import report
from grader.judging.checks import Bounds
from grader.outputs import STUDENTS, student_dir, write_atomic
from grader.text import trim_traceback
from grader.records import CellOutcome, CheckResult, Evidence, ModelEvidence, SubmissionResult, from_jsonable

TEMPLATES_DIR = Path(__file__).with_name("templates")
DEFAULT_THRESHOLD = "0.001"
KINDS = ("l1", "l2")
PARTS = ("recap", "cnn")
PART_TITLE = {"recap": "Recap: Boston Housing", "cnn": "Practice: CIFAR-10 CNN"}
MODEL_NOUN = {"recap": "recap model", "cnn": "CNN"}
KIND_COLOR = {"l1": "#0072B2", "l2": "#E69F00"}
PASS_COLOR, FAIL_COLOR, REF_COLOR = "#009E73", "#D55E00", "#8c8c8c"
FIG_WIDTH = 4.8  # inches; at 96 CSS px per inch a figure is at most 461 px wide, readable on a phone
PNG_DPI = 144  # 1.5 image pixels per CSS pixel: sharp on high-density screens, small files
CSS_PX_PER_INCH = 96
TRACEBACK_LINES = 40
TRACEBACK_CHARS = 4000
_RC = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9}


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def write_feedback(
    grades_dir: Path,
    result: SubmissionResult,
    evidence: Evidence | None,
    baseline: dict[str, Any] | None,
    bounds: Bounds | None,
    processes: int = 1,
) -> Path:
    """Write ``grades_dir/students/<key>/feedback.html`` for one submission and return its path.

    ``evidence`` is None when the notebook was never executed (invalid file, grader failure): the
    page then shows the score, the reason and the checks, and says why there are no plots.
    ``processes`` > 1 draws the figures in that many processes.
    """
    threshold = bounds.threshold if bounds is not None else DEFAULT_THRESHOLD
    with _drawing(processes):
        parts = [] if evidence is None else [_part_view(p, evidence, baseline, bounds, threshold) for p in PARTS]
    context = {
        "result": result,
        "score": _fmt(result.score),
        "max_score": _fmt(result.max_score),
        "passed_all": all(c.passed for c in result.checks if c.max_score > 0),
        "checks": [_check_view(c) for c in result.checks if c.visibility != "hidden"],  # the student's page
        "evidence": evidence,
        "parts": parts,
        "models": [] if evidence is None else _models_table(evidence),
        "failed_cells": [] if evidence is None else _failed_cells(evidence.cells),
        "neutralised": [] if evidence is None else list(evidence.neutralised),
        "threshold": f"{float(threshold):g}",
        "baseline_note": _baseline_note(baseline),
    }
    return write_atomic(student_dir(grades_dir, result.key) / "feedback.html", _render("feedback.html.j2", context))


def write_index(
    grades_dir: Path,
    results: list[SubmissionResult],
    evidences: dict[str, Evidence | None],
    baseline: dict[str, Any] | None,
    processes: int = 1,
) -> Path:
    """Write ``grades_dir/index.html``: the class overview, linking each student's ``feedback.html``.

    ``evidences`` maps a result's ``key`` to its evidence (None, or absent, when it was not executed).
    ``processes`` > 1 draws the figures in that many processes.
    """
    entries = _cnn_entries(results, evidences)
    ordered = sorted(results, key=lambda r: r.key)
    with _drawing(processes):
        plots = {
            "score_plot": _score_histogram(results),
            "pass_plot": _pass_rates(results),
            "scatter_plot": _accuracy_time_scatter(entries, results, evidences, baseline),
        }
    context = {
        "n": len(results),
        **plots,
        "leaderboard": _leaderboard_rows(entries, baseline),
        "reference_machine": _machine(baseline) if baseline else "",
        "students": [
            {
                "key": r.key,
                "href": f"{STUDENTS}/{urllib.parse.quote(r.key, safe='')}/feedback.html",
                "has_page": (student_dir(grades_dir, r.key) / "feedback.html").exists(),
                "status": r.status,
                "score": _fmt(r.score),
                "max_score": _fmt(r.max_score),
                "failed": [c.id for c in r.checks if not c.passed and c.max_score > 0],
                "flags": report.flags(r),
                "student": ", ".join(x for x in (r.name, r.student_id) if x),
                "late": r.late,
            }
            for r in ordered
        ],
        "flagged": [
            {
                "key": r.key,
                "href": f"{STUDENTS}/{urllib.parse.quote(r.key, safe='')}/results.json",
                "items": [{"id": name, "message": message, "note": note} for name, message, note in details],
            }
            for r in ordered
            if (details := report.flag_details(r))
        ],
        "baseline_note": _baseline_note(baseline),
        "unsandboxed": sorted({m for r in results for m in r.unsandboxed}),
    }
    return write_atomic(grades_dir / "index.html", _render("index.html.j2", context))


def leaderboard(result: SubmissionResult, evidence: Evidence | None) -> list[dict[str, Any]]:
    """Gradescope leaderboard entries from the student's best identified CNN (L1 or L2).

    The best CNN is the one with the highest recomputed test accuracy (ties: the faster one); its
    training time is reported with it. Empty when no CNN with a recomputed accuracy was identified.
    """
    if evidence is None:
        return []
    candidates = [m for m in _identified_cnns(evidence).values() if m is not None and _finite(m.metric)]
    if not candidates:
        return []
    best = max(candidates, key=lambda m: (float(m.metric or 0.0), -m.train_seconds))
    return [
        {"name": "CNN test accuracy", "value": float(best.metric or 0.0), "order": "desc"},
        {"name": "CNN training time (s)", "value": float(best.train_seconds), "order": "asc"},
    ]


def read_baseline(path: Path) -> dict[str, Any] | None:
    """A reference baseline (``reference/baselines/<profile>.json``), or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_evidence(grades_dir: Path, result: SubmissionResult) -> Evidence | None:
    """The evidence a grading run saved for ``result`` (``<grades>/.jobs/<key>/evidence.json``), or None.

    An invalid submission is never executed, so any evidence file there is left over from an earlier
    run and is ignored; an unreadable file is treated as absent.
    """
    path = grades_dir / ".jobs" / result.key / "evidence.json"
    if result.status == "invalid" or not path.is_file():
        return None
    try:
        return from_jsonable(Evidence, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------
# View data (what the templates show)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plot:
    """One figure: a PNG data URI (or None when there is nothing true to draw) and the text around it.

    Built while a page's view is assembled; its image may be filled in afterwards, when the page's
    figures are drawn together (``_drawing``).
    """

    title: str
    image: str | None
    width: int
    alt: str
    notes: list[str]


def _check_view(c: CheckResult) -> dict[str, Any]:
    return {
        "id": c.id,
        "passed": c.passed,
        "score": _fmt(c.score),
        "max_score": _fmt(c.max_score),
        "informational": c.max_score == 0,
        "message": c.message,
    }


def _identified(ev: Evidence, part: str) -> dict[str, ModelEvidence | None]:
    models = checks.recap_models(ev) if part == "recap" else checks.cnn_models(ev)
    return {kind: checks.pick(models, kind) for kind in KINDS}


def _identified_cnns(ev: Evidence) -> dict[str, ModelEvidence | None]:
    return _identified(ev, "cnn")


def _label(part: str, kind: str) -> str:
    return f"{kind.upper()} {MODEL_NOUN[part]}"


def _part_view(
    part: str, ev: Evidence, baseline: dict[str, Any] | None, bounds: Bounds | None, threshold: str
) -> dict[str, Any]:
    chosen = _identified(ev, part)
    missing = [
        f"No {_label(part, k)} was identified (see the {part}.{k}_regularizer check), so nothing is shown for it."
        for k in KINDS
        if chosen[k] is None
    ]
    weight_plots = _weight_plots(part, chosen, baseline, threshold)
    curve_plots = [_learning_curves(part, k, m) for k, m in chosen.items() if m is not None]
    metric_plot = _metric_plot(part, chosen, baseline, bounds)
    time_plot = _time_plot(chosen, baseline) if part == "cnn" else None
    return {
        "id": part,
        "title": PART_TITLE[part],
        "missing": missing,
        "summaries": [_model_summary(part, k, m) for k, m in chosen.items() if m is not None],
        "weight_plots": weight_plots,
        "curve_plots": curve_plots,
        "metric_plots": [p for p in (metric_plot, time_plot) if p is not None],
    }


def _model_summary(part: str, kind: str, m: ModelEvidence) -> str:
    where = f"fit in code cell {m.cell}" if m.cell is not None else "fit in an unknown cell"
    fits = f", fit() called {len(m.fit_indices)} times" if len(m.fit_indices) > 1 else ""
    metric = ""
    if _finite(m.metric):
        metric = f"; recomputed test {'MSE' if m.metric_name == 'mse' else m.metric_name} {_metric_str(m.metric_name, m.metric)}"
    elif m.metric_error:
        metric = f"; no test metric ({m.metric_error})"
    return (
        f"Your {_label(part, kind)}: {where}, {m.epochs} epochs{fits}, {m.train_seconds:.1f} s of training, "
        f"{m.train_rows} training rows ({m.scaling}){metric}."
    )


def _models_table(ev: Evidence) -> list[dict[str, Any]]:
    roles: dict[int, str] = {}
    for part in PARTS:
        for kind, m in _identified(ev, part).items():
            if m is not None:
                roles[m.fit_index] = f"your {_label(part, kind)}"
    rows = []
    for i, m in enumerate(ev.models, 1):
        pens = checks.describe_penalties(m.facts.layers) if m.facts is not None and m.facts.loaded else []
        if m.facts is None or not m.facts.loaded:
            structure = "could not be inspected" + (f": {m.facts.load_error}" if m.facts and m.facts.load_error else "")
        else:
            structure = "; ".join(pens) if pens else "no regularizer"
        rows.append(
            {
                "n": i,
                "cell": "?" if m.cell is None else str(m.cell),
                "dataset": m.dataset + ("" if m.data_verified else " (unverified)"),
                "penalties": structure,
                "metric": _metric_str(m.metric_name, m.metric) if _finite(m.metric) else (m.metric_error or "-"),
                "seconds": f"{m.train_seconds:.1f}",
                "role": roles.get(m.fit_index, "not graded (an earlier or other model)"),
            }
        )
    return rows


def _failed_cells(cells: list[CellOutcome]) -> list[dict[str, Any]]:
    out = []
    for c in sorted(cells, key=lambda c: c.index):
        if c.status == "ok":
            continue
        out.append(
            {
                "index": c.index,
                "part": c.part,
                "status": c.status,
                "error": f"{c.error_name}: {c.error_value}" if c.error_name else (c.error_value or c.status),
                "traceback": trim_traceback(c.traceback, lines=TRACEBACK_LINES, chars=TRACEBACK_CHARS),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------
# Reference data
# ------------------------------------------------------------------------------------------------


def _baseline_values(baseline: dict[str, Any] | None, name: str) -> list[float]:
    if not baseline:
        return []
    raw = (baseline.get("metrics") or {}).get(name) or []
    vals = []
    for v in raw if isinstance(raw, list) else [raw]:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            vals.append(f)
    return vals


def _reference(name: str, baseline: dict[str, Any] | None, bounds: Bounds | None) -> dict[str, float] | None:
    if bounds is not None and name in bounds.reference:
        return dict(bounds.reference[name])
    vals = _baseline_values(baseline, name)
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _reference_histogram(baseline: dict[str, Any] | None, key: str, edges: list[float]) -> list[float] | None:
    """The reference's counts for ``recap.l1`` etc. over the same bins as ``edges``, or None when there are none."""
    hists = (baseline or {}).get("histograms")
    h = hists.get(key) if isinstance(hists, dict) else None
    if not isinstance(h, dict):
        return None
    try:
        ref_edges, counts = _edges_of(h), [float(c) for c in h.get("counts") or []]
    except (TypeError, ValueError):
        return None
    same_bins = len(ref_edges) == len(edges) and all(abs(a - b) < 1e-9 for a, b in zip(ref_edges, edges, strict=True))
    if not same_bins or len(counts) + 1 != len(edges) or sum(counts) <= 0:
        return None
    return counts


def _edges_of(h: dict[str, Any]) -> list[float]:
    return [float(e) for e in h.get("edges") or []]


def _machine(baseline: dict[str, Any] | None) -> str:
    m = (baseline or {}).get("machine")
    if isinstance(m, dict):
        bits = [str(m.get("cpu") or "an unnamed CPU")]
        if m.get("cores"):
            bits.append(f"{m['cores']} cores")
        return ", ".join(bits)
    return str(m) if m else "an unrecorded machine"


def _baseline_note(baseline: dict[str, Any] | None) -> str:
    if not baseline:
        return "No reference baseline was available, so nothing is compared with the reference solution."
    seeds = baseline.get("seeds") or []
    return (
        f"Reference: the instructor's solution, profile {baseline.get('profile', '?')}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}, measured on {_machine(baseline)}."
    )


# ------------------------------------------------------------------------------------------------
# Per-student plots
# ------------------------------------------------------------------------------------------------


def _weight_plots(
    part: str, chosen: dict[str, ModelEvidence | None], baseline: dict[str, Any] | None, threshold: str
) -> list[Plot]:
    """One histogram per identified model, sharing axes so L1 and L2 compare at a glance."""
    thr = float(threshold)
    series: dict[str, tuple[ModelEvidence, list[float], list[float], list[float] | None]] = {}
    plots: list[Plot] = []
    for kind, m in chosen.items():
        if m is None:
            continue
        label = _label(part, kind)
        hist = m.facts.abs_weight_histogram if m.facts is not None and m.facts.loaded else {}
        edges, counts = _edges_of(hist), [float(c) for c in hist.get("counts") or []]
        if len(edges) != len(counts) + 1 or sum(counts) <= 0:
            why = m.facts.load_error if m.facts is not None and m.facts.load_error else "no kernel weights were read"
            plots.append(
                Plot(
                    f"Weights of your {label}", None, 0, "", [f"The weights of your {label} could not be read ({why})."]
                )
            )
            continue
        ref = _reference_histogram(baseline, f"{part}.{kind}", edges)
        series[kind] = (m, edges, counts, ref)
    ymax = 0.0
    for _, _, counts, ref in series.values():
        ymax = max(ymax, max(_shares(counts)), max(_shares(ref)) if ref else 0.0)
    for kind, (m, edges, counts, ref) in series.items():
        label = _label(part, kind)
        shares = _shares(counts)
        below = _near_zero(m, threshold, edges, counts)
        title = f"Your {label}: {below:.0%} of weights below {thr:g}"
        notes = [
            f"{_pct(below)} of your {label}'s {m.facts.kernel_params if m.facts else 0:,} kernel weights (biases "
            f"excluded) have |w| < {thr:g}, the grader's near-zero threshold (dashed line)."
        ]
        ref_shares = _shares(ref) if ref else None
        ref_below: float | None = None
        if ref_shares is not None:
            ref_below = sum(s for s, lo in zip(ref_shares, edges[:-1], strict=False) if lo < math.log10(thr)) / 100
            notes.append(f"Grey: the reference {label}, {_pct(ref_below)} below the threshold.")
        else:
            notes.append("The baseline has no reference histogram for this model, so none is drawn.")

        def build(
            edges: list[float] = edges,
            shares: list[float] = shares,
            ref_shares: list[float] | None = ref_shares,
            kind: str = kind,
            title: str = title,
        ) -> Figure:
            fig, ax = _figure(3.4)
            if ref_shares is not None:
                ax.stairs(ref_shares, edges, fill=True, color=REF_COLOR, alpha=0.35, label="reference")
            ax.stairs(shares, edges, fill=True, color=KIND_COLOR[kind], alpha=0.75, label=f"your {kind.upper()} model")
            ax.axvline(math.log10(thr), color="black", linestyle="--", linewidth=1.2, label=f"|w| = {thr:g}")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(0, ymax * 1.08 if ymax > 0 else 1)
            ticks = [
                e
                for e in range(math.ceil(edges[0]), math.floor(edges[-1]) + 1)
                if e % 2 == 0 or edges[-1] - edges[0] < 6
            ]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.set_xticklabels([f"$10^{{{t}}}$" for t in ticks])
            ax.set_xlabel("weight magnitude |w| (log scale)")
            ax.set_ylabel("share of kernel weights (%)")
            ax.set_title(title)
            ax.legend(loc="upper left", frameon=False)
            return fig

        alt = f"Histogram of |w| for your {label}: {_pct(below)} below {thr:g}" + (
            f"; reference {_pct(ref_below)}" if ref_below is not None else ""
        )
        plots.append(_draw(title, alt, notes, build))
    return plots


def _shares(counts: list[float] | None) -> list[float]:
    if not counts:
        return [0.0]
    total = sum(counts)
    return [100.0 * c / total for c in counts] if total > 0 else [0.0 for _ in counts]


def _near_zero(m: ModelEvidence, threshold: str, edges: list[float], counts: list[float]) -> float:
    if m.facts is not None and threshold in m.facts.near_zero:
        return float(m.facts.near_zero[threshold])
    cut = math.log10(float(threshold))
    total = sum(counts)
    return sum(c for c, lo in zip(counts, edges[:-1], strict=False) if lo < cut) / total if total else 0.0


def _learning_curves(part: str, kind: str, m: ModelEvidence) -> Plot:
    label = _label(part, kind)
    title = f"Your {label}: training curves"
    history = {
        k: [float(v) if isinstance(v, (int, float)) else math.nan for v in vals]
        for k, vals in (m.history or {}).items()
        if isinstance(vals, list) and vals
    }
    panels = _history_panels(history)
    if not panels:
        return Plot(title, None, 0, "", [f"No per-epoch history was recorded for your {label}."])
    epochs = max(len(v) for v in history.values())
    notes = []
    if len(m.fit_indices) > 1:
        notes.append(f"fit() was called {len(m.fit_indices)} times on this model; the curves show the last call.")
    for _, series in panels:
        for key in series:
            vals = history[key]
            bad = next((i for i, v in enumerate(vals) if not math.isfinite(v)), None)
            if bad is not None:
                notes.append(f"{key} is not a finite number from epoch {bad + 1} on (training diverged).")
    loss = history.get("loss", [])
    if loss and math.isfinite(loss[0]) and math.isfinite(loss[-1]):
        notes.insert(0, f"Training loss went from {loss[0]:.4g} (epoch 1) to {loss[-1]:.4g} (epoch {len(loss)}).")
    height = 2.3 + 1.9 * (len(panels) - 1)

    def build() -> Figure:
        fig = _new_figure(height)
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (name, series) in zip(axes, panels, strict=True):
            for key in series:
                vals = history[key]
                xs = list(range(1, len(vals) + 1))
                ys = [v if math.isfinite(v) else math.nan for v in vals]
                is_val = key.startswith("val_")
                ax.plot(
                    xs,
                    ys,
                    marker="o" if len(xs) <= 15 else None,
                    markersize=3,
                    linestyle="--" if is_val else "-",
                    color=KIND_COLOR[kind] if not is_val else "#444444",
                    label="validation" if is_val else "training",
                )
            finite = [v for key in series for v in history[key] if math.isfinite(v)]
            if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
                ax.set_yscale("log")
            ax.set_ylabel(_metric_label(name))
            ax.legend(frameon=False)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("epoch")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_title(f"Your {label}: {epochs} epoch{'s' if epochs != 1 else ''}")
        return fig

    alt = f"Per-epoch {', '.join(n for n, _ in panels)} of your {label} over {epochs} epochs"
    return _draw(title, alt, notes, build)


def _metric_label(name: str) -> str:
    """A short axis label for a Keras history key (long names do not fit beside a short panel)."""
    known = {
        "loss": "loss (incl. penalty)",
        "mse": "MSE",
        "mean_squared_error": "MSE",
        "mae": "MAE",
        "mean_absolute_error": "MAE",
        "rmse": "RMSE",
        "root_mean_squared_error": "RMSE",
    }
    if name in known:
        return known[name]
    if "acc" in name:
        return "accuracy (fraction)"
    return name if len(name) <= 22 else name[:20] + "..."


def _history_panels(history: dict[str, list[float]]) -> list[tuple[str, list[str]]]:
    """(metric name, [its history keys]) for the loss and at most one other metric (accuracy preferred)."""
    names = []
    for key in history:
        base = key[4:] if key.startswith("val_") else key
        if base not in names:
            names.append(base)
    panels = []
    if "loss" in names:
        panels.append("loss")
    others = [n for n in names if n != "loss"]
    acc = [n for n in others if "acc" in n]
    if acc or others:
        panels.append((acc or others)[0])
    return [(n, [k for k in (n, f"val_{n}") if k in history]) for n in panels]


def _metric_plot(
    part: str, chosen: dict[str, ModelEvidence | None], baseline: dict[str, Any] | None, bounds: Bounds | None
) -> Plot | None:
    metric = "mse" if part == "recap" else "accuracy"
    noun = "test MSE" if part == "recap" else "test accuracy"
    title = f"Your recomputed {noun} against the reference"
    rows: list[tuple[str, float, dict[str, float] | None, float | None, bool | None]] = []
    notes = []
    for kind, m in chosen.items():
        if m is None:
            continue
        label = _label(part, kind)
        if not _finite(m.metric):
            notes.append(f"The grader could not recompute the {noun} of your {label}: {m.metric_error or 'no value'}.")
            continue
        value = float(m.metric or 0.0)
        ref_name = f"{part}.{kind}_{metric}"
        if part == "recap" and bounds is not None and "recap.mse" in bounds.reference:
            ref_name = "recap.mse"  # the recap bound pools the L1 and L2 runs (docs/calibration.md)
        ref = _reference(ref_name, baseline, bounds)
        bound = None
        if bounds is not None:
            bound = bounds.recap_mse_max.get(kind) if part == "recap" else bounds.cnn_accuracy_min.get(kind)
        ok = None if bound is None else (value <= bound if part == "recap" else value >= bound)
        rows.append((kind, value, ref, bound, ok))
        sentence = f"Your {label}: {_metric_str(metric, value)}"
        if ref is not None:
            sentence += "; reference (L1 and L2 runs pooled)" if ref_name == "recap.mse" else "; reference"
            sentence += f" median {_metric_str(metric, ref['median'])} (range {_metric_str(metric, ref['min'])} to {_metric_str(metric, ref['max'])})"
        if bound is not None:
            sentence += f"; the bound is {_metric_str(metric, bound)}, so this {'passes' if ok else 'fails'}"
        notes.append(sentence + ".")
    if not rows:
        if not notes:
            return None
        return Plot(title, None, 0, "", notes)
    better = "lower is better" if part == "recap" else "higher is better"
    height = 1.9 + 0.75 * len(rows)

    def build() -> Figure:
        fig, ax = _figure(height)
        ys = list(range(len(rows)))[::-1]
        xs_all: list[float] = []
        for y, (kind, value, ref, bound, ok) in zip(ys, rows, strict=True):
            if ref is not None:
                ax.plot(
                    [ref["min"], ref["max"]],
                    [y, y],
                    color=REF_COLOR,
                    linewidth=9,
                    alpha=0.45,
                    solid_capstyle="butt",
                    label="reference range" if y == ys[0] else None,
                )
                ax.plot(
                    [ref["median"]],
                    [y],
                    marker="|",
                    markersize=18,
                    color="#444444",
                    linestyle="none",
                    label="reference median" if y == ys[0] else None,
                )
                xs_all += [ref["min"], ref["max"]]
            if bound is not None:
                ax.plot(
                    [bound, bound],
                    [y - 0.32, y + 0.32],
                    color=FAIL_COLOR,
                    linestyle="--",
                    linewidth=1.5,
                    label="bound" if y == ys[0] else None,
                )
                xs_all.append(bound)
            color = KIND_COLOR[kind] if ok is None else (PASS_COLOR if ok else FAIL_COLOR)
            ax.plot(
                [value],
                [y],
                marker="o",
                markersize=9,
                color=color,
                linestyle="none",
                markeredgecolor="black",
                label="yours" if y == ys[0] else None,
            )
            ax.annotate(
                _metric_str(metric, value),
                (value, y),
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
                fontsize=9,
            )
            xs_all.append(value)
        lo, hi = min(xs_all), max(xs_all)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.1 or 1.0
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.yaxis.set_major_locator(FixedLocator(ys))
        ax.set_yticklabels([f"your {k.upper()}" for k, *_ in rows])
        unit = "test MSE, (thousand USD)²" if part == "recap" else "test accuracy (fraction correct)"
        ax.set_xlabel(f"{unit}; {better}")
        ax.set_title(f"Recomputed {noun} vs the reference")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, frameon=False, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        return fig

    alt = "; ".join(f"your {k.upper()}: {_metric_str(metric, v)}" for k, v, *_ in rows)
    return _draw(title, alt, notes, build)


def _time_plot(chosen: dict[str, ModelEvidence | None], baseline: dict[str, Any] | None) -> Plot | None:
    title = "Your CNN training time against the reference"
    bars: list[tuple[str, float, tuple[float, float] | None, str]] = []
    notes = []
    for kind, m in chosen.items():
        if m is None:
            continue
        bars.append((f"your {kind.upper()}", m.train_seconds, None, KIND_COLOR[kind]))
        ref_vals = _baseline_values(baseline, f"cnn.{kind}_train_seconds")
        sentence = f"Your {kind.upper()} CNN trained for {m.train_seconds:.1f} s ({m.epochs} epochs)"
        if ref_vals:
            med = statistics.median(ref_vals)
            bars.append((f"reference {kind.upper()}", med, (min(ref_vals), max(ref_vals)), REF_COLOR))
            sentence += f"; the reference {kind.upper()} CNN's median is {med:.1f} s"
        notes.append(sentence + ".")
    if not bars:
        return None
    if baseline:
        notes.append(
            f"Reference times were measured on the baseline's machine ({_machine(baseline)}); yours on the grading "
            "machine. Different hardware alone can change training time severalfold, so compare loosely."
        )

    height = 1.3 + 0.45 * len(bars)

    def build() -> Figure:
        fig, ax = _figure(height)
        ys = list(range(len(bars)))[::-1]
        for y, (_, secs, span, color) in zip(ys, bars, strict=True):
            xerr = None if span is None else [[secs - span[0]], [span[1] - secs]]
            ax.barh(
                [y],
                [secs],
                color=color,
                alpha=0.85 if span is None else 0.5,
                xerr=xerr,
                capsize=4,
                error_kw={"ecolor": "#444444"},
            )
            ax.annotate(
                f"{secs:.1f} s",
                (secs if span is None else max(secs, span[1]), y),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
            )
        ax.yaxis.set_major_locator(FixedLocator(ys))
        ax.set_yticklabels([b[0] for b in bars])
        ax.set_xlim(0, max(max(b[1], b[2][1] if b[2] else 0) for b in bars) * 1.3 or 1)
        ax.set_xlabel("training time (s), all fit() calls of the model")
        ax.set_title("CNN training time" + (" (reference: baseline machine)" if baseline else ""))
        ax.grid(axis="x", alpha=0.3)
        return fig

    alt = "; ".join(f"{name}: {secs:.1f} s" for name, secs, _, _ in bars)
    return _draw(title, alt, notes, build)


# ------------------------------------------------------------------------------------------------
# Class plots
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _CnnEntry:
    key: str
    kind: str
    accuracy: float
    seconds: float
    epochs: int


def _cnn_entries(results: list[SubmissionResult], evidences: dict[str, Evidence | None]) -> list[_CnnEntry]:
    out = []
    for r in results:
        ev = evidences.get(r.key)
        if ev is None or r.status == "invalid":
            continue
        for kind, m in _identified_cnns(ev).items():
            if m is not None and _finite(m.metric):
                out.append(_CnnEntry(r.key, kind, float(m.metric or 0.0), float(m.train_seconds), m.epochs))
    return out


def _score_histogram(results: list[SubmissionResult]) -> Plot:
    title = "Score distribution"
    if not results:
        return Plot(title, None, 0, "", ["No submissions were graded."])
    scores = [r.score for r in results]
    top = max(r.max_score for r in results) or 1.0
    med = statistics.median(scores)
    notes = [
        f"{len(scores)} submissions; median score {_fmt(med)} of {_fmt(top)}, "
        f"{sum(1 for s in scores if s >= top)} with full marks."
    ]

    def build() -> Figure:
        fig, ax = _figure(3.0)
        if float(top).is_integer() and top <= 60:
            bins = [i - 0.5 for i in range(int(top) + 2)]
        else:
            bins = [top * i / 20 for i in range(21)]
        ax.hist(scores, bins=bins, color=KIND_COLOR["l1"], edgecolor="white")
        ax.set_xlim(bins[0], bins[-1])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"score (points out of {_fmt(top)})")
        ax.set_ylabel("submissions")
        ax.set_title(f"Scores of {len(scores)} submissions (median {_fmt(med)})")
        return fig

    return _draw(title, f"Histogram of {len(scores)} scores, median {_fmt(med)}", notes, build)


def _pass_rates(results: list[SubmissionResult]) -> Plot:
    title = "Which checks pass"
    ids = list(checks.CHECK_IDS) + sorted({c.id for r in results for c in r.checks} - set(checks.CHECK_IDS))
    stats = []
    for cid in ids:
        found = [c for r in results for c in r.checks if c.id == cid]
        if found:
            stats.append((cid, sum(c.passed for c in found), len(found), all(c.max_score == 0 for c in found)))
    if not stats:
        return Plot(title, None, 0, "", ["No checks were run."])
    worst = min(stats, key=lambda s: s[1] / s[2])
    notes = [
        f"The least-passed check is {worst[0]}: {worst[1]} of {worst[2]} submissions pass it. "
        "Short bars are the common mistakes; 0-point checks are informational."
    ]
    height = 1.2 + 0.3 * len(stats)

    def build() -> Figure:
        fig, ax = _figure(height)
        ys = list(range(len(stats)))[::-1]
        rates = [100.0 * p / n for _, p, n, _ in stats]
        colors = [REF_COLOR if info else KIND_COLOR["l1"] for *_, info in stats]
        ax.barh(ys, rates, color=colors)
        for y, (_, p, n, _) in zip(ys, stats, strict=True):
            ax.annotate(
                f"{p}/{n}", (100.0 * p / n, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8
            )
        ax.yaxis.set_major_locator(FixedLocator(ys))
        ax.set_yticklabels([cid + (" (0 pts)" if info else "") for cid, _, _, info in stats], fontsize=9)
        ax.set_xlim(0, 115)
        ax.xaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
        ax.set_xlabel("submissions passing (%)")
        ax.set_title("Pass rate of each check")
        return fig

    alt = "; ".join(f"{cid}: {p}/{n} pass" for cid, p, n, _ in stats)
    return _draw(title, alt, notes, build)


def _accuracy_time_scatter(
    entries: list[_CnnEntry],
    results: list[SubmissionResult],
    evidences: dict[str, Evidence | None],
    baseline: dict[str, Any] | None,
) -> Plot:
    title = "CNN test accuracy against training time"
    refs = {}
    for kind in KINDS:
        acc = _baseline_values(baseline, f"cnn.{kind}_accuracy")
        secs = _baseline_values(baseline, f"cnn.{kind}_train_seconds")
        if acc and secs:
            refs[kind] = (acc, secs)
    without = sum(1 for r in results if evidences.get(r.key) is not None and r.status != "invalid") - len(
        {e.key for e in entries}
    )
    notes = []
    if not entries:
        notes.append(
            "No submission has an identified CNN with a recomputed test accuracy, so there is nothing to plot."
        )
        return Plot(title, None, 0, "", notes)
    notes.append(
        f"{len(entries)} identified CNNs from {len({e.key for e in entries})} submissions. Up and to the left is "
        "better: higher accuracy in roughly the same time."
    )
    if without > 0:
        notes.append(f"{without} executed submission(s) have no identified CNN with an accuracy and are not shown.")
    if refs:
        notes.append(
            f"Stars: the reference solution (median, bars from min to max over seeds), timed on the baseline's machine "
            f"({_machine(baseline)}); students were timed on the grading machine, so compare times loosely."
        )

    def build() -> Figure:
        fig, ax = _figure(3.8)
        times: list[float] = []
        for kind in KINDS:
            pts = [e for e in entries if e.kind == kind]
            if pts:
                ax.scatter(
                    [e.seconds for e in pts],
                    [e.accuracy for e in pts],
                    s=30,
                    alpha=0.85,
                    zorder=3,
                    color=KIND_COLOR[kind],
                    marker="o" if kind == "l1" else "s",
                    edgecolors="black",
                    linewidths=0.4,
                    label=f"{kind.upper()} CNN ({len(pts)})",
                )
                times += [e.seconds for e in pts]
            if kind in refs:
                acc, secs = refs[kind]
                ma, ms = statistics.median(acc), statistics.median(secs)
                ax.errorbar(
                    [ms],
                    [ma],
                    xerr=[[ms - min(secs)], [max(secs) - ms]],
                    yerr=[[ma - min(acc)], [max(acc) - ma]],
                    fmt="*",
                    markersize=15,
                    color="black",
                    ecolor=REF_COLOR,
                    elinewidth=1,
                    markerfacecolor=KIND_COLOR[kind],
                    capsize=3,
                    zorder=2,
                    alpha=0.9,
                    label=f"reference {kind.upper()}",
                )
                times += secs
        positive = [t for t in times if t > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_xscale("log")
        ax.margins(0.08)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("test accuracy (fraction correct)")
        ax.set_title("CNN accuracy vs training time")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, loc="best")
        return fig

    alt = f"Scatter of {len(entries)} CNNs: test accuracy against training time, with the reference marked"
    return _draw(title, alt, notes, build)


def _leaderboard_rows(entries: list[_CnnEntry], baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "key": e.key,
            "href": f"{STUDENTS}/{urllib.parse.quote(e.key, safe='')}/feedback.html",
            "kind": e.kind.upper(),
            "accuracy": e.accuracy,
            "seconds": e.seconds,
            "epochs": str(e.epochs),
            "reference": False,
        }
        for e in entries
    ]
    for kind in KINDS:
        acc = _baseline_values(baseline, f"cnn.{kind}_accuracy")
        secs = _baseline_values(baseline, f"cnn.{kind}_train_seconds")
        if acc and secs:
            rows.append(
                {
                    "key": "reference (median)",
                    "href": None,
                    "kind": kind.upper(),
                    "accuracy": statistics.median(acc),
                    "seconds": statistics.median(secs),
                    "epochs": "",
                    "reference": True,
                }
            )
    rows.sort(key=lambda r: (-r["accuracy"], r["seconds"]))
    rank = 0
    for row in rows:
        if not row["reference"]:
            rank += 1
        row["rank"] = "" if row["reference"] else str(rank)
        row["accuracy_text"] = f"{row['accuracy']:.3f}"
        row["seconds_text"] = f"{row['seconds']:.1f}"
    return rows


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _new_figure(height: float) -> Figure:
    fig = Figure(figsize=(FIG_WIDTH, height), dpi=PNG_DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _figure(height: float) -> tuple[Figure, Any]:
    fig = _new_figure(height)
    return fig, fig.add_subplot()


def _draw(title: str, alt: str, notes: list[str], build: Callable[[], Figure]) -> Plot:
    """A plot of ``build()``: drawn now, or queued when a page's figures are drawn together (``_drawing``)."""
    plot = Plot(title, None, 0, alt, list(notes))
    queue = _QUEUE.get()
    if queue is None:
        _fill(plot, _png_or_error(build))
    else:
        queue.append((plot, build))
    return plot


def _fill(plot: Plot, drawn: bytes | str) -> None:
    """Give a plot its image, or, when drawing failed, a sentence saying so (never a broken page)."""
    if isinstance(drawn, bytes):
        plot.image = "data:image/png;base64," + base64.b64encode(drawn).decode("ascii")
        plot.width = round(FIG_WIDTH * CSS_PX_PER_INCH)
    else:
        plot.notes.append(f"This plot could not be drawn ({drawn}).")


def _png_or_error(build: Callable[[], Figure]) -> bytes | str:
    try:
        with warnings.catch_warnings(), matplotlib.rc_context(cast(Any, _RC)):
            warnings.simplefilter("ignore")  # a font or layout warning must not fail a grading run
            fig = build()
            png = _png(fig)
            fig.clear()
        return png
    except Exception as exc:  # noqa: BLE001 - the page must still be written
        return f"{type(exc).__name__}: {exc}"


_QUEUE: contextvars.ContextVar[list[tuple[Plot, Callable[[], Figure]]] | None] = contextvars.ContextVar(
    "feedback_plot_queue", default=None
)
_FORKED_BUILDS: list[Callable[[], Figure]] = []  # what forked drawing processes inherit (see _draw_all)


@contextlib.contextmanager
def _drawing(processes: int) -> Iterator[None]:
    """Queue the figures of the views built inside the block; draw them all, in ``processes`` processes, on leaving."""
    queue: list[tuple[Plot, Callable[[], Figure]]] = []
    token = _QUEUE.set(queue)
    try:
        yield
    finally:
        _QUEUE.reset(token)
    for (plot, _), drawn in zip(queue, _draw_all([build for _, build in queue], processes)):
        _fill(plot, drawn)


def _draw_all(builds: list[Callable[[], Figure]], processes: int) -> list[bytes | str]:
    """Draw every figure, split over forked processes when more than one is allowed (Linux), else here.

    The figures of a page are independent, and drawing them is most of the time a page takes: with
    2 processes a page is ready in about half the time. The children are forks of this process
    (they inherit the figure builders and imported libraries, and only draw and return PNG bytes);
    if forking or a child fails, everything is drawn here instead, with the same result.
    """
    import multiprocessing

    processes = min(processes, len(builds))
    if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        _FORKED_BUILDS[:] = builds
        try:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                return list(pool.map(_draw_forked, range(len(builds)), chunksize=1))
        except Exception:  # noqa: BLE001 - drawing here gives the same figures
            pass
        finally:
            _FORKED_BUILDS.clear()
    return [_png_or_error(build) for build in builds]


def _draw_forked(index: int) -> bytes | str:
    return _png_or_error(_FORKED_BUILDS[index])


def _png(fig: Figure) -> bytes:
    """Draw with Agg and encode a 256-colour palette PNG: a third of the size of a true-colour one, and
    indistinguishable for these flat-coloured plots."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _render(template: str, context: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(template).render(**context)


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 or x == 0 else f"{x:.1%}"


def _metric_str(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if name == "accuracy" else f"{value:.2f}"
