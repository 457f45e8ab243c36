"""What both feedback pages share: their inputs (a saved run's evidence, the reference baseline), the
models the pages show, number formatting, and rendering a template.

Templates are in ``templates/``; every student-controlled string is escaped by jinja2's autoescape.
Which model is "the L1 CNN" is decided by ``grader.judging.models`` (``pick``, ``recap_models``,
``cnn_models``), never by variable names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2

from grader.judging import checks
from grader.outputs import job_dir
from grader.records import Evidence, ModelEvidence, SubmissionResult, from_jsonable
from grader.runner.files import JobFiles

TEMPLATES_DIR = Path(__file__).with_name("templates")
KINDS = ("l1", "l2")


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
    path = JobFiles(job_dir(grades_dir, result.key)).evidence
    if result.status == "invalid" or not path.is_file():
        return None
    try:
        return from_jsonable(Evidence, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def identified(ev: Evidence, part: str) -> dict[str, ModelEvidence | None]:
    """The L1 and L2 model the checks identified in ``part`` (``recap`` or ``cnn``), None where there is none."""
    models = checks.recap_models(ev) if part == "recap" else checks.cnn_models(ev)
    return {kind: checks.pick(models, kind) for kind in KINDS}


def baseline_values(baseline: dict[str, Any] | None, name: str) -> list[float]:
    """The finite values of the baseline's metric ``name`` (one per seed), [] when it has none."""
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


def machine(baseline: dict[str, Any] | None) -> str:
    """The machine the baseline was measured on, in words."""
    m = (baseline or {}).get("machine")
    if isinstance(m, dict):
        bits = [str(m.get("cpu") or "an unnamed CPU")]
        if m.get("cores"):
            bits.append(f"{m['cores']} cores")
        return ", ".join(bits)
    return str(m) if m else "an unrecorded machine"


def baseline_note(baseline: dict[str, Any] | None) -> str:
    """A sentence naming the reference the page compares with, or saying there is none."""
    if not baseline:
        return "No reference baseline was available, so nothing is compared with the reference solution."
    seeds = baseline.get("seeds") or []
    return (
        f"Reference: the instructor's solution, profile {baseline.get('profile', '?')}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}, measured on {machine(baseline)}."
    )


def render(template: str, context: dict[str, Any]) -> str:
    """``templates/<template>`` rendered with ``context``, autoescaped; an undefined name is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(template).render(**context)


def finite(x: float | None) -> bool:
    """Whether ``x`` is a number and neither NaN nor infinite."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x: float) -> str:
    """A score as Python's ``g`` format writes it (``7``, ``7.5``)."""
    return f"{x:g}"
