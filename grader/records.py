"""Typed, JSON-able records passed between the runner, the evaluator, the checks and the reports.

Every record is a frozen dataclass made only of str/int/float/bool/None, lists and dicts of those,
and other records, so it can cross a process boundary as JSON (never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Vocabularies: every value the grader writes into a status or part field, and nothing else
# (tests/test_vocabulary.py reads the sources for the values they write).
# --------------------------------------------------------------------------------------------

# How one code cell ran: set by the runner (grader/runner/execute.py), and by the orchestrator for the
# cells a killed runner never reported (``deadline`` after a timeout, else ``unknown``).
CellStatus = Literal["ok", "error", "timeout", "dead_kernel", "deadline", "unknown"]
# How the notebook's execution ended (``Evidence.status``): the runner's own verdict in ``cells.json``
# (which says ``running`` until the runner ends, and is read as ``error`` if it never ends), or how the
# orchestrator saw the runner process end (grader/runner/execute.py: ``RunResult``), which overrides it.
ExecutionStatus = Literal["completed", "deadline", "timeout", "kernel_died", "memory", "crashed", "error"]
# A submission's grade status (``SubmissionResult.status``, the gradebook's ``status`` column).
SubmissionStatus = Literal["graded", "invalid", "timeout", "memory", "kernel_died", "error"]
# The submission status each execution status gives; anything else is an ``error``.
SUBMISSION_STATUS: dict[str, SubmissionStatus] = {
    "completed": "graded",
    "deadline": "timeout",
    "timeout": "timeout",
    "memory": "memory",
    "crashed": "error",
    "kernel_died": "kernel_died",
    "error": "error",
}

# The exercise's parts, named as the check ids name them (``recap.*``, ``cnn.*``): the recap (Boston
# Housing regression) and the practice (CIFAR-10 CNNs); ``other`` for a cell that belongs to neither.
Part = Literal["recap", "cnn", "other"]
RECAP: Part = "recap"
CNN: Part = "cnn"
OTHER: Part = "other"
PARTS: tuple[Part, ...] = (RECAP, CNN)  # the graded parts, in the notebook's order


def to_jsonable(obj: Any) -> Any:
    """Turn a record (or nested records) into plain JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def from_jsonable(cls: type[T], data: Any, *, strict: bool = False, require_all: bool = False) -> T:
    """Rebuild a record of type ``cls`` from plain JSON data (the inverse of :func:`to_jsonable`).

    Keys that are not fields of ``cls`` are ignored (evidence written by an older grader), and values of
    ``Literal`` fields are taken as they are, unchecked. ``strict``: at every level, a key that is not a
    field, or a field without a default that is missing, raises ValueError instead; ``require_all``: at
    this level, a missing field with a default too.
    """
    import typing

    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if strict:
        unknown = sorted(set(data) - {f.name for f in fields})
        missing = [
            f.name for f in fields
            if f.name not in data
            and (require_all or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))
        ]
        if unknown or missing:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}, missing fields {missing}")
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], strict)
    return cls(**kwargs)


def kernel_record(cls: type[T], data: Any) -> T:
    """A record line of the kernel's ``records.jsonl`` (its ``type`` key set aside), read strictly: every
    field of ``cls`` present at the top level, nothing unknown at any level. ValueError otherwise, so that
    a field the kernel misspells or leaves out is refused instead of read as "not recorded"."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    fields = dict(data)
    fields.pop("type", None)
    return from_jsonable(cls, fields, strict=True, require_all=True)


def _coerce(tp: Any, value: Any, strict: bool = False) -> Any:
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value, strict=strict)  # type: ignore[arg-type]  # tp is a dataclass type here
    if origin in (list, tuple) and args:
        return [_coerce(args[0], v, strict) for v in value]
    if origin is dict and len(args) == 2:
        return {k: _coerce(args[1], v, strict) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None):
                continue
            if isinstance(a, type) and dataclasses.is_dataclass(a) and isinstance(value, dict):
                return from_jsonable(a, value, strict=strict)
        return value
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through the one atomic writer (``grader.outputs.write_atomic``)."""
    from grader.outputs import write_atomic

    text = json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    write_atomic(path, text + "\n")


def _json_default(obj: Any) -> Any:
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# What the kernel records (written by grader/kernel/bootstrap.py inside the student's process, so
# everything here is untrusted input for the grader: it is used to *find* things, and the
# numbers that decide a grade are recomputed from the saved models).
# --------------------------------------------------------------------------------------------



@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Summary of one feature (a table column, or an image channel) of an array."""

    mean: float
    std: float
    min: float
    max: float


@dataclasses.dataclass(frozen=True)
class ArrayFingerprint:
    """What the kernel saw of an array passed to ``fit`` or ``evaluate``.

    ``kind`` is ``array`` for anything numpy can view (NumPy, tensors, DataFrames), ``none`` when the
    argument was absent and ``unsupported`` for generators and the like. ``samples_file`` (relative to
    the job dir) holds an ``(n_rows, len(sample_positions))`` float64 array: the values of every row at a
    few fixed flat positions, used to match rows against the canonical data.
    """

    kind: str
    shape: list[int] = dataclasses.field(default_factory=list)
    dtype: str = ""
    sha256: str = ""
    channels: list[ChannelStats] = dataclasses.field(default_factory=list)
    sample_positions: list[int] = dataclasses.field(default_factory=list)
    samples_file: str | None = None
    note: str = ""
    origin: str = "array"  # array | tf.data | generator | PyDataset | ImageDataGenerator | train_on_batch | custom_loop


@dataclasses.dataclass(frozen=True)
class FitRecord:
    """One call of ``Model.fit`` in the student's kernel."""

    index: int
    model_key: str
    model_class: str
    cell: int | None
    epochs_requested: int | None
    epochs_run: int
    batch_size: int | None
    validation_split: float
    train_seconds: float
    history: dict[str, list[float]]
    x: ArrayFingerprint
    y: ArrayFingerprint
    validation_x: ArrayFingerprint
    artifact: str | None
    artifact_format: str | None
    artifact_error: str | None
    facts_file: str | None
    origin: str = "array"  # how it was trained: fit on arrays, on a stream (tf.data, ...), train_on_batch, custom_loop
    steps: int = 0  # optimizer steps, for training outside fit
    # Layer path -> the kernel penalty the training loss really included (serialised regularizer or None);
    # None when not recorded. A claim of the kernel: it can only take a penalty away from what the saved
    # model's configuration shows (see docs/security.md).
    trained_penalties: dict[str, Any] | None = None
    penalty_note: str = ""
    # The arrays a stream drew its rows from, where it says (an ImageDataGenerator iterator's x, a tf.data
    # pipeline's sliced tensors): unaugmented rows, for telling which canonical rows it was trained on.
    x_sources: list[ArrayFingerprint] = dataclasses.field(default_factory=list)
    # What the training loss's weight penalties added to the gradient, measured on some of the training
    # steps themselves (``PenaltyProbe``); empty when no step could be probed. A claim of the kernel, judged
    # by ``grader/judging/penalties.py`` and cross-checked against the saved weights (docs/security.md).
    penalty_probes: list[PenaltyProbe] = dataclasses.field(default_factory=list)
    # Why training ended before it finished (an interrupt at the cell's time limit, an exception), or "".
    interrupted: str = ""
    # How the run differed from the student's own session, e.g. op determinism switched off for an XLA step.
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class VariableProbe:
    """One trainable variable at one probed step: the penalty part ``p`` of its gradient (the gradient that
    reaches it from the loss other than through the model's data path) against its weights ``w``, as the
    sums a least-squares fit of ``p = a*sign(w) + b*w`` needs: ``[n, Σp·sign(w), Σp·w, Σsign(w)², Σsign(w)·w,
    Σw², Σp²]``."""

    path: str  # the variable's path in the model (``sequential/dense/kernel``)
    shape: list[int]
    sums: list[float]
    declared: str = ""  # the class of the regularizer the variable itself carries (kernel_regularizer=...), or ""


@dataclasses.dataclass(frozen=True)
class PenaltyProbe:
    """The weight penalties of one training step, measured while it ran."""

    step: int  # the model's optimizer step (1 = its first) at which it was taken
    # graph (a traced step: a tf.function loop, a model's own train_step) | xla (a jit-compiled step) | eager (a
    # GradientTape loop) | losses (after a fit by Keras's own train_step: the gradients of its model.losses terms)
    mode: str
    variables: list[VariableProbe]


@dataclasses.dataclass(frozen=True)
class EvaluateRecord:
    """One call of ``Model.evaluate`` in the student's kernel: what it returned (untrusted)."""

    index: int
    model_key: str
    cell: int | None
    x: ArrayFingerprint
    y: ArrayFingerprint
    returned: list[float]
    metric_names: list[str]


@dataclasses.dataclass(frozen=True)
class CellOutcome:
    """How one code cell of the submission ran."""

    index: int
    status: CellStatus
    seconds: float
    part: Part
    error_name: str = ""
    error_value: str = ""
    traceback: str = ""
    neutralised: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RegularizerFacts:
    """A regularizer attached to a layer, as read from the reloaded model."""

    kind: str  # l1 | l2 | l1_l2 | other
    l1: float
    l2: float
    class_name: str
    # Where the penalty came from, in the student's words ("kernel_regularizer=L1(0.0001)", "an L1 term in
    # the training loss"), for penalties measured from training; "" for one read from a saved configuration.
    source: str = ""


@dataclasses.dataclass(frozen=True)
class LayerFacts:
    name: str
    class_name: str
    is_conv: bool
    has_kernel: bool
    kernel_params: int
    kernel_regularizer: RegularizerFacts | None
    bias_regularizer: RegularizerFacts | None
    activity_regularizer: RegularizerFacts | None
    path: str = ""  # unique within the model (names repeat across nested models)
    # Trained weights of two or more dimensions (kernels, a custom layer's weight matrices), by variable path.
    weights: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the evaluator found in one captured model, in its own process."""

    fit_index: int
    loaded: bool
    load_error: str
    source: str  # keras | savedmodel+kernel-facts
    layers: list[LayerFacts]
    kernel_params: int
    near_zero: dict[str, float]  # threshold (as str) -> fraction of kernel weights below it
    abs_weight_histogram: dict[str, list[float]]  # {"edges": [...], "counts": [...]} over log10|w|
    predictions_file: str | None
    prediction_error: str
    train_predictions_file: str | None = None  # predictions on canonical training rows prepared the same way


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The verdict on one rubric entry for one submission."""

    id: str
    passed: bool
    score: float
    max_score: float
    message: str  # for the student, in the exercise's terms
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    visibility: str = "visible"  # who sees it (the rubric's; Gradescope's values)
    flag: bool = False  # a failure is an integrity concern (the rubric's)
    instructor_note: str = ""  # for instructor outputs only (the rubric's note)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A captured model's training, as ``results.json`` reports it (``cell``: notebook cell index)."""

    key: str
    cell: int | None
    dataset: str  # boston | cifar10 | unknown
    train_seconds: float  # wall seconds inside its fit calls, summed
    epochs: int
    penalties: str = ""  # how its penalties were judged: measured (in training) | declared (saved configuration)
    notes: list[str] = dataclasses.field(default_factory=list)  # for the instructor (ModelEvidence.notes)


@dataclasses.dataclass(frozen=True)
class SubmissionResult:
    """A submission's grade: what the reports are written from."""

    key: str
    source: str
    status: SubmissionStatus
    reason: str
    score: float
    max_score: float
    checks: list[CheckResult]
    execution_time: float
    timings: dict[str, float]
    grader_version: str
    profile: str
    seed: int
    models: list[TrainedModel] = dataclasses.field(default_factory=list)  # every captured model, in training order
    unsandboxed: list[str] = dataclasses.field(default_factory=list)  # protections missing when the notebook ran
    # Who it belongs to, where the submissions came from an LMS download (grader/lms/).
    student_id: str = ""
    name: str = ""
    late: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)  # about the download (earlier files ignored, ...)


@dataclasses.dataclass(frozen=True)
class ModelEvidence:
    """One trained model as the checks see it: its final state after its last ``fit``."""

    key: str
    fit_index: int
    fit_indices: list[int]
    cell: int | None
    dataset: str  # boston | cifar10 | unknown
    data_verified: bool
    data_note: str
    train_rows: int
    leaked_test_rows: int
    scaling: str
    facts: ModelFacts | None
    metric_name: str  # mse | accuracy | ""
    metric: float | None
    metric_error: str
    train_seconds: float
    epochs: int
    history: dict[str, list[float]]
    origin: str = "array"  # how it was trained (FitRecord.origin)
    steps: int = 0  # optimizer steps outside fit (train_on_batch, a custom loop)
    untrained_penalties: list[str] = dataclasses.field(default_factory=list)  # layers whose saved penalty was not trained
    penalty_note: str = ""  # why, when the kernel said
    prepared_from: str = "training data"  # whose verified rows decided how its test inputs are prepared
    train_metric: float | None = None  # the same metric on canonical training rows (TRAIN_PROBE_ROWS of them)
    metric_rows: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # test rows, training rows scored
    # Why its (last) training ended early ("" when it finished): FitRecord.interrupted, e.g. the cell's time limit.
    interrupted: str = ""
    # How its penalties were judged: "measured" (from probed training steps) or "declared" (the saved
    # configuration, for training paths no step of which could be probed).
    penalty_evidence: str = "declared"
    notes: list[str] = dataclasses.field(default_factory=list)  # FitRecord.notes of its fits


@dataclasses.dataclass(frozen=True)
class EvaluationEvidence:
    """One ``evaluate`` call of the notebook: what it returned against what the grader recomputed."""

    index: int
    model_key: str
    on_test_set: bool
    returned: list[float]
    metric_name: str
    recomputed: float | None
    # The names the kernel recorded for the returned values (Keras 3: ["loss", "compile_metrics"], or the
    # keys of a returned dict); empty when not recorded.
    returned_names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Evidence:
    """Everything the checks judge, assembled by the orchestrator from the runner's and evaluator's artifacts.

    Saved as ``evidence.json``: changing the rubric re-runs the checks from it without executing anything.
    """

    status: ExecutionStatus
    reason: str
    cells: list[CellOutcome]
    models: list[ModelEvidence]
    evaluations: list[EvaluationEvidence]
    printed: list[str]
    neutralised: list[str]
    timings: dict[str, float]
    sources: dict[str, str] = dataclasses.field(default_factory=dict)  # Part -> its code, for hints only
    unsandboxed: list[str] = dataclasses.field(default_factory=list)  # protections missing where it executed
