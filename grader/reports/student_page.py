"""The student's page: ``<grades>/students/<key>/feedback.html`` for one submission.

It shows the score, every check with its message, and plots of the student's own models
(weight-magnitude distributions against the reference's, learning curves, recomputed test metrics
against the reference band, CNN training time), a table of every model fit and the cells that
failed. The page is a single file: images are embedded as base64 PNG, CSS is inline, nothing is
fetched.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from grader.judging import checks
from grader.judging.checks import Bounds
from grader.judging.hints import unreadable_model
from grader.outputs import student_dir, write_atomic
from grader.records import CellOutcome, CheckResult, Evidence, ModelEvidence, SubmissionResult
from grader.reports import drawing, views
from grader.reports.drawing import FAIL_COLOR, KIND_COLOR, PASS_COLOR, REF_COLOR, Figures, Plot
from grader.reports.views import KINDS
from grader.text import trim_traceback

DEFAULT_THRESHOLD = "0.001"
PARTS = ("recap", "cnn")
PART_TITLE = {"recap": "Recap: Boston Housing", "cnn": "Practice: CIFAR-10 CNN"}
MODEL_NOUN = {"recap": "recap model", "cnn": "CNN"}
TRACEBACK_LINES = 40
TRACEBACK_CHARS = 4000


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
    with drawing.batch(processes) as figures:
        parts = (
            [] if evidence is None else [_part_view(figures, p, evidence, baseline, bounds, threshold) for p in PARTS]
        )
    context = {
        "result": result,
        "score": views.fmt(result.score),
        "max_score": views.fmt(result.max_score),
        "passed_all": all(c.passed for c in result.checks if c.max_score > 0),
        "checks": [_check_view(c) for c in result.checks if c.visibility != "hidden"],  # the student's page
        "evidence": evidence,
        "parts": parts,
        "models": [] if evidence is None else _models_table(evidence),
        "failed_cells": [] if evidence is None else _failed_cells(evidence.cells),
        "neutralised": [] if evidence is None else list(evidence.neutralised),
        "threshold": f"{float(threshold):g}",
        "baseline_note": views.baseline_note(baseline),
    }
    return write_atomic(
        student_dir(grades_dir, result.key) / "feedback.html", views.render("feedback.html.j2", context)
    )


def _check_view(c: CheckResult) -> dict[str, Any]:
    return {
        "id": c.id,
        "passed": c.passed,
        "score": views.fmt(c.score),
        "max_score": views.fmt(c.max_score),
        "informational": c.max_score == 0,
        "message": c.message,
    }


def _label(part: str, kind: str) -> str:
    return f"{kind.upper()} {MODEL_NOUN[part]}"


def _part_view(
    figures: Figures, part: str, ev: Evidence, baseline: dict[str, Any] | None, bounds: Bounds | None, threshold: str
) -> dict[str, Any]:
    chosen = views.identified(ev, part)
    missing = [
        f"No {_label(part, k)} was identified (see the {part}.{k}_regularizer check), so nothing is shown for it."
        for k in KINDS
        if chosen[k] is None
    ]
    weight_plots = _weight_plots(figures, part, chosen, baseline, threshold)
    curve_plots = [_learning_curves(figures, part, k, m) for k, m in chosen.items() if m is not None]
    metric_plot = _metric_plot(figures, part, chosen, baseline, bounds)
    time_plot = _time_plot(figures, chosen, baseline) if part == "cnn" else None
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
    if views.finite(m.metric):
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
        for kind, m in views.identified(ev, part).items():
            if m is not None:
                roles[m.fit_index] = f"your {_label(part, kind)}"
    rows = []
    for i, m in enumerate(ev.models, 1):
        pens = checks.describe_penalties(m.facts.layers) if m.facts is not None and m.facts.loaded else []
        if m.facts is None or not m.facts.loaded:
            structure = "could not be inspected" + (
                f": {unreadable_model(m.facts.load_error)}" if m.facts and m.facts.load_error else ""
            )
        else:
            structure = "; ".join(pens) if pens else "no regularizer"
        rows.append(
            {
                "n": i,
                "cell": "?" if m.cell is None else str(m.cell),
                "dataset": m.dataset + ("" if m.data_verified else " (unverified)"),
                "penalties": structure,
                "metric": _metric_str(m.metric_name, m.metric) if views.finite(m.metric) else (m.metric_error or "-"),
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
                "part": checks.PART_WORD.get(c.part, c.part),  # the exercise's word: "recap", "practice"
                "status": c.status,
                "error": f"{c.error_name}: {c.error_value}" if c.error_name else (c.error_value or c.status),
                "traceback": trim_traceback(c.traceback, lines=TRACEBACK_LINES, chars=TRACEBACK_CHARS),
            }
        )
    return out


def _reference(name: str, baseline: dict[str, Any] | None, bounds: Bounds | None) -> dict[str, float] | None:
    if bounds is not None and name in bounds.reference:
        return dict(bounds.reference[name])
    vals = views.baseline_values(baseline, name)
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


def _weight_plots(
    figures: Figures,
    part: str,
    chosen: dict[str, ModelEvidence | None],
    baseline: dict[str, Any] | None,
    threshold: str,
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
            why = (
                unreadable_model(m.facts.load_error)
                if m.facts is not None and m.facts.load_error
                else "no kernel weights were read"
            )
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
            fig, ax = drawing.figure(3.4)
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
        plots.append(figures.plot(title, alt, notes, build))
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


def _learning_curves(figures: Figures, part: str, kind: str, m: ModelEvidence) -> Plot:
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
        fig = drawing.new_figure(height)
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
    return figures.plot(title, alt, notes, build)


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


MetricRow = tuple[str, float, dict[str, float] | None, float | None, bool | None]  # kind, value, reference, bound, passed


def _metric_plot(
    figures: Figures,
    part: str,
    chosen: dict[str, ModelEvidence | None],
    baseline: dict[str, Any] | None,
    bounds: Bounds | None,
) -> Plot | None:
    metric = "mse" if part == "recap" else "accuracy"
    noun = "test MSE" if part == "recap" else "test accuracy"
    title = f"Your recomputed {noun} against the reference"
    rows: list[MetricRow] = []
    notes = []
    for kind, m in chosen.items():
        if m is None:
            continue
        label = _label(part, kind)
        if not views.finite(m.metric):
            notes.append(
                f"The grader could not recompute the {noun} of your {label}: "
                f"{checks.plain_metric_error(m.metric_error) if m.metric_error else 'no value'}."
            )
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
    alt = "; ".join(f"your {k.upper()}: {_metric_str(metric, v)}" for k, v, *_ in rows)
    return figures.plot(title, alt, notes, lambda: _draw_metric_rows(rows, metric, part, noun))


def _draw_metric_rows(rows: list[MetricRow], metric: str, part: str, noun: str) -> Figure:
    """The metric figure: per model, the reference range and median, the bound and the student's value."""
    better = "lower is better" if part == "recap" else "higher is better"
    fig, ax = drawing.figure(1.9 + 0.75 * len(rows))
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

def _time_plot(
    figures: Figures, chosen: dict[str, ModelEvidence | None], baseline: dict[str, Any] | None
) -> Plot | None:
    title = "Your CNN training time against the reference"
    bars: list[tuple[str, float, tuple[float, float] | None, str]] = []
    notes = []
    for kind, m in chosen.items():
        if m is None:
            continue
        bars.append((f"your {kind.upper()}", m.train_seconds, None, KIND_COLOR[kind]))
        ref_vals = views.baseline_values(baseline, f"cnn.{kind}_train_seconds")
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
            f"Reference times were measured on the baseline's machine ({views.machine(baseline)}); yours on the grading "
            "machine. Different hardware alone can change training time severalfold, so compare loosely."
        )

    height = 1.3 + 0.45 * len(bars)

    def build() -> Figure:
        fig, ax = drawing.figure(height)
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
    return figures.plot(title, alt, notes, build)


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 or x == 0 else f"{x:.1%}"


def _metric_str(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if name == "accuracy" else f"{value:.2f}"
