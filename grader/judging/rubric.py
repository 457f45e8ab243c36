"""The rubric (``rubric.toml``: each check's points, description, note, visibility and flag, and the
settings) and the bounds the metric and sparsity checks hold a model to, derived from the reference
baselines (docs/calibration.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import statistics
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grader.errors import RubricError

RUBRIC_PATH = Path(__file__).with_name("rubric.toml")
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's test visibility


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    id: str
    points: float
    description: str
    note: str  # for the instructor: why a check carries no points, what a failure means
    visibility: str = "visible"  # Gradescope's: visible | hidden | after_due_date | after_published
    flag: bool = False  # a failure is an integrity concern for the instructor


@dataclasses.dataclass(frozen=True)
class Rubric:
    checks: dict[str, CheckSpec]
    settings: dict[str, Any]

    @property
    def max_score(self) -> float:
        return float(sum(c.points for c in self.checks.values()))


def read_rubric(path: Path, check_ids: Sequence[str]) -> Rubric:
    """The rubric at ``path``, which must have an entry for each of ``check_ids`` and for nothing else."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RubricError(f"{path}: {exc}") from None
    entries = data.get("checks", {})
    unknown = sorted(set(entries) - set(check_ids))
    if unknown:
        named = []
        for cid in unknown:
            close = difflib.get_close_matches(cid, check_ids, n=1, cutoff=0.6)
            named.append(f"{cid!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RubricError(f"{path}: unknown check id {', '.join(named)}; the known ids are {', '.join(check_ids)}")
    checks = {}
    for cid in check_ids:
        entry = entries.get(cid)
        if entry is None:
            raise RubricError(f"{path}: [checks.\"{cid}\"] is missing")
        if not isinstance(entry, dict):
            raise RubricError(f"{path}: [checks.\"{cid}\"] must be a table with points = N")
        points = entry.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
            raise RubricError(f"{path}: [checks.\"{cid}\"] points must be a number >= 0, got {points!r}")
        visibility = entry.get("visibility", "visible")
        if visibility not in VISIBILITIES:
            raise RubricError(
                f"{path}: [checks.\"{cid}\"] visibility must be one of {', '.join(VISIBILITIES)}, got {visibility!r}"
            )
        flag = entry.get("flag", False)
        if not isinstance(flag, bool):
            raise RubricError(f"{path}: [checks.\"{cid}\"] flag must be true or false, got {flag!r}")
        checks[cid] = CheckSpec(
            cid, float(points), str(entry.get("description", "")), str(entry.get("note", "")), visibility, flag
        )
    return Rubric(checks, dict(data.get("settings", {})))


# ------------------------------------------------------------------------------------------------
# Bounds from reference baselines
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """One-sided limits derived from the reference distributions (see docs/calibration.md)."""

    recap_mse_max: dict[str, float]  # by penalty kind
    cnn_accuracy_min: dict[str, float]
    recap_l1_near_zero_min: float
    cnn_l1_near_zero_above: float  # an L1 CNN must leave more weights near zero than every reference L2 run
    reference: dict[str, dict[str, float]]  # metric -> {median, min, max}
    threshold: str


def bound_from(values: list[float], direction: str, widen: float) -> float:
    """Worst reference value, pushed further out by ``widen`` times its distance from the median.

    ``direction`` is ``max`` when lower is better (MSE) and ``min`` when higher is better (accuracy).
    """
    if not values:
        raise ValueError("no reference values")
    med = statistics.median(values)
    if direction == "max":
        worst = max(values)
        return worst + widen * (worst - med)
    worst = min(values)
    return worst - widen * (med - worst)


def bounds_from_baseline(baseline: dict[str, Any], rubric: Rubric) -> Bounds:
    widen = float(rubric.settings.get("widen", 1.0))
    threshold = str(rubric.settings.get("near_zero_threshold", "0.001"))
    metrics: dict[str, list[float]] = baseline["metrics"]

    def vals(name: str) -> list[float]:
        if name not in metrics or not metrics[name]:
            raise ValueError(f"the baseline has no values for {name}; rerun `python -m reference`")
        return [float(v) for v in metrics[name]]

    pooled = {**metrics, "recap.mse": list(metrics.get("recap.l1_mse", [])) + list(metrics.get("recap.l2_mse", []))}
    summary = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in ((n, [float(x) for x in pooled[n]]) for n in pooled)
        if v
    }
    return Bounds(
        # At 1e-5 the penalty barely changes the recap model, so its L1 and L2 runs are draws from one
        # distribution: pooling them doubles the sample the bound rests on (docs/calibration.md).
        recap_mse_max=dict.fromkeys(("l1", "l2"), bound_from(vals("recap.l1_mse") + vals("recap.l2_mse"), "max", widen)),
        cnn_accuracy_min={k: bound_from(vals(f"cnn.{k}_accuracy"), "min", widen) for k in ("l1", "l2")},
        recap_l1_near_zero_min=max(0.0, bound_from(vals(f"recap.l1_near_zero:{threshold}"), "min", widen)),
        # Chosen by calibration (docs/calibration.md): "sparser than an L2 penalty ever leaves the
        # reference CNN" was the one criterion with no false fail and no false pass on the corpus.
        cnn_l1_near_zero_above=max(vals(f"cnn.l2_near_zero:{threshold}")),
        reference=summary,
        threshold=threshold,
    )
