"""The class page: ``<grades>/index.html``, the overview of a grading run.

It shows the score distribution, the pass rate of each check, CNN accuracy against training time
for the class, a leaderboard, the flagged submissions and links to every student's page. The page
is a single file: images are embedded as base64 PNG, CSS is inline, nothing is fetched.
"""

from __future__ import annotations

import dataclasses
import statistics
import urllib.parse
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from grader.judging import checks
from grader.outputs import STUDENTS, student_dir, write_atomic
from grader.records import Evidence, SubmissionResult
from grader.reports import drawing, report, views
from grader.reports.drawing import KIND_COLOR, REF_COLOR, Figures, Plot
from grader.reports.views import KINDS


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
    with drawing.batch(processes) as figures:
        plots = {
            "score_plot": _score_histogram(figures, results),
            "pass_plot": _pass_rates(figures, results),
            "scatter_plot": _accuracy_time_scatter(figures, entries, results, evidences, baseline),
        }
    context = {
        "n": len(results),
        **plots,
        "leaderboard": _leaderboard_rows(entries, baseline),
        "reference_machine": views.machine(baseline) if baseline else "",
        "students": [
            {
                "key": r.key,
                "href": f"{STUDENTS}/{urllib.parse.quote(r.key, safe='')}/feedback.html",
                "has_page": (student_dir(grades_dir, r.key) / "feedback.html").exists(),
                "status": r.status,
                "score": views.fmt(r.score),
                "max_score": views.fmt(r.max_score),
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
        "baseline_note": views.baseline_note(baseline),
        "unsandboxed": sorted({m for r in results for m in r.unsandboxed}),
    }
    return write_atomic(grades_dir / "index.html", views.render("index.html.j2", context))


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
        for kind, m in views.identified(ev, "cnn").items():
            if m is not None and views.finite(m.metric):
                out.append(_CnnEntry(r.key, kind, float(m.metric or 0.0), float(m.train_seconds), m.epochs))
    return out


def _score_histogram(figures: Figures, results: list[SubmissionResult]) -> Plot:
    title = "Score distribution"
    if not results:
        return Plot(title, None, 0, "", ["No submissions were graded."])
    scores = [r.score for r in results]
    top = max(r.max_score for r in results) or 1.0
    med = statistics.median(scores)
    notes = [
        f"{len(scores)} submissions; median score {views.fmt(med)} of {views.fmt(top)}, "
        f"{sum(1 for s in scores if s >= top)} with full marks."
    ]

    def build() -> Figure:
        fig, ax = drawing.figure(3.0)
        if float(top).is_integer() and top <= 60:
            bins = [i - 0.5 for i in range(int(top) + 2)]
        else:
            bins = [top * i / 20 for i in range(21)]
        ax.hist(scores, bins=bins, color=KIND_COLOR["l1"], edgecolor="white")
        ax.set_xlim(bins[0], bins[-1])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"score (points out of {views.fmt(top)})")
        ax.set_ylabel("submissions")
        ax.set_title(f"Scores of {len(scores)} submissions (median {views.fmt(med)})")
        return fig

    return figures.plot(title, f"Histogram of {len(scores)} scores, median {views.fmt(med)}", notes, build)


def _pass_rates(figures: Figures, results: list[SubmissionResult]) -> Plot:
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
        fig, ax = drawing.figure(height)
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
    return figures.plot(title, alt, notes, build)


def _accuracy_time_scatter(
    figures: Figures,
    entries: list[_CnnEntry],
    results: list[SubmissionResult],
    evidences: dict[str, Evidence | None],
    baseline: dict[str, Any] | None,
) -> Plot:
    title = "CNN test accuracy against training time"
    refs = {}
    for kind in KINDS:
        acc = views.baseline_values(baseline, f"cnn.{kind}_accuracy")
        secs = views.baseline_values(baseline, f"cnn.{kind}_train_seconds")
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
            f"({views.machine(baseline)}); students were timed on the grading machine, so compare times loosely."
        )

    def build() -> Figure:
        fig, ax = drawing.figure(3.8)
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
    return figures.plot(title, alt, notes, build)


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
        acc = views.baseline_values(baseline, f"cnn.{kind}_accuracy")
        secs = views.baseline_values(baseline, f"cnn.{kind}_train_seconds")
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
