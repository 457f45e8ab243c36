"""Code the runner executes inside the student's kernel before any student cell.

It pins seeds, serves the datasets offline, refuses other network access, and records every
``Model.fit`` / ``Model.evaluate`` call with the model saved at fit time. It only *produces
artifacts*: nothing here decides a grade. Importing this module has no side effects; the runner
executes its source in the kernel and then calls :func:`install`.

The fingerprint helpers (``sample_positions``, ``fingerprint_array``) are shared with the grader, which
fingerprints the canonical data the same way to recognise what a model was fit on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import weakref
from pathlib import Path
from typing import Any

SAMPLE_WIDTH = 32
HASH_THREAD_BYTES = 1 << 20  # arrays from this size on are hashed by a second thread
SERVED_URLS = {
    "lib.stat.cmu.edu/datasets/boston": "boston.txt",
}


def sample_positions(width: int) -> list[int]:
    """Flat positions sampled from every row: all of them for narrow rows, else a fixed random subset."""
    import numpy as np

    if width <= SAMPLE_WIDTH:
        return list(range(width))
    rng = np.random.default_rng(width)
    return sorted(int(i) for i in rng.choice(width, SAMPLE_WIDTH, replace=False))


def channel_stats(cols: Any, block_values: int = 1 << 16) -> list[dict[str, float]]:
    """Mean, standard deviation, minimum and maximum of every column of a 2-D numeric array, in float64.

    One pass over the array in blocks of about ``block_values`` values, each copied into one reused
    float64 buffer laid out so that every reduction runs along contiguous memory (columns first when
    there are few of them, as for the 3 channels of images). Blocks are combined with Chan et al.'s
    pairwise update of the mean and the sum of squared deviations, which keeps the precision of a
    two-pass computation.
    """
    import numpy as np

    n_rows, n_cols = cols.shape
    rows_per_block = max(1, min(n_rows, block_values // max(n_cols, 1)))
    by_column = n_cols < 64
    axis = 1 if by_column else 0
    buffer = np.empty((n_cols, rows_per_block) if by_column else (rows_per_block, n_cols))
    count = 0
    mean = np.zeros(n_cols)
    m2 = np.zeros(n_cols)
    low = np.full(n_cols, np.inf)
    high = np.full(n_cols, -np.inf)
    for start in range(0, n_rows, rows_per_block):
        part = cols[start : start + rows_per_block]
        size = part.shape[0]
        block = buffer[:, :size] if by_column else buffer[:size]
        np.copyto(block, part.T if by_column else part, casting="unsafe")
        low = np.minimum(low, block.min(axis=axis))
        high = np.maximum(high, block.max(axis=axis))
        block_mean = block.mean(axis=axis)
        block -= np.expand_dims(block_mean, axis)
        np.square(block, out=block)
        count, mean, m2 = combine_moments(count, mean, m2, size, block_mean, block.sum(axis=axis))
    std = np.sqrt(np.maximum(m2, 0.0) / count)
    return [
        {"mean": float(mean[j]), "std": float(std[j]), "min": float(low[j]), "max": float(high[j])}
        for j in range(n_cols)
    ]


def combine_moments(count: int, mean: Any, m2: Any, size: int, part_mean: Any, part_m2: Any) -> tuple[int, Any, Any]:
    """Count, mean and sum of squared deviations of two parts together (Chan et al.'s pairwise update)."""
    total = count + size
    delta = part_mean - mean
    return total, mean + delta * (size / total), m2 + part_m2 + delta**2 * (count * size / total)


def _hash_beside(data: Any, work: Any) -> tuple[str, Any]:
    """The sha256 of ``data`` and the result of ``work()``; for large data the hash is computed by a
    second thread at the same time (hashlib and numpy both release the GIL), which halves the time a
    50,000-image training set takes to describe. Whatever happens to that thread, the hash returned
    is of all of ``data``.
    """
    if len(data) < HASH_THREAD_BYTES:
        return hashlib.sha256(data).hexdigest(), work()
    import threading

    digest = hashlib.sha256()
    done: list[bool] = []

    def update() -> None:
        digest.update(data)
        done.append(True)

    hasher = threading.Thread(target=update, name="grader-fingerprint", daemon=True)
    hasher.start()
    try:
        result = work()
    finally:
        hasher.join()
    return (digest.hexdigest() if done else hashlib.sha256(data).hexdigest()), result


def fingerprint_array(value: Any, samples_path: Path | None, relative_to: Path | None) -> dict[str, Any]:
    """Describe an array-like: shape, dtype, hash, per-channel statistics and per-row samples.

    Returns a dict in the shape of ``grader.records.ArrayFingerprint``.
    """
    import numpy as np

    if value is None:
        return {"kind": "none"}
    if is_stream(value):
        # Never materialised here: np.asarray would draw every batch of a generator or an
        # ImageDataGenerator iterator (all its augmented copies at once). Its batches are recorded as
        # the model consumes them instead (``RowTap``).
        return {"kind": "unsupported", "note": f"{type(value).__name__}: a stream of batches"}
    try:
        arr = np.asarray(value)
    except Exception as exc:  # generators, datasets, ragged inputs
        return {"kind": "unsupported", "note": f"{type(value).__name__}: {exc}"[:200]}
    if arr.dtype == object or arr.ndim == 0 or arr.size == 0 or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
    ):
        return {"kind": "unsupported", "note": f"{type(value).__name__} of dtype {arr.dtype}"}
    arr = np.ascontiguousarray(arr)
    n = arr.shape[0]
    cols = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 2 else arr.reshape(-1, 1)
    sha, channels = _hash_beside(arr.view(np.uint8).reshape(-1).data, lambda: channel_stats(cols))
    flat = arr.reshape(n, -1)
    positions = sample_positions(flat.shape[1])
    samples_file = None
    if samples_path is not None:
        samples = flat[:, positions].astype(np.float64)
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(samples_path, samples, allow_pickle=False)
        samples_file = str(samples_path.relative_to(relative_to)) if relative_to else str(samples_path)
    return {
        "kind": "array",
        "shape": [int(s) for s in arr.shape],
        "dtype": str(arr.dtype),
        "sha256": sha,
        "channels": channels,
        "sample_positions": positions,
        "samples_file": samples_file,
    }


def is_stream(value: Any) -> bool:
    """True for what yields batches rather than holding rows: a ``tf.data.Dataset``, a generator or
    iterator, a ``keras.utils.PyDataset`` (``ImageDataGenerator.flow`` returns one), a Keras Sequence."""
    import numpy as np

    if value is None or isinstance(value, (np.ndarray, list, tuple, dict, str, bytes, int, float, bool)):
        return False
    if hasattr(value, "__array__") or hasattr(value, "__array_interface__") or hasattr(value, "to_numpy"):
        return False  # NumPy-like arrays, tensors, DataFrames
    if hasattr(value, "__next__") or hasattr(value, "element_spec"):
        return True  # generators, iterators, tf.data datasets
    return hasattr(value, "__getitem__") and hasattr(value, "__len__")


TAP_ROWS = 60_000  # rows of a stream recorded per training run: a whole CIFAR-10 training epoch


class RowTap:
    """What a model was trained on when that is not one array: the rows of the batches it consumed.

    Fed batch by batch (from a tf.data map, a ``train_on_batch`` call, a custom loop's model call), it
    keeps what :func:`fingerprint_array` keeps of an array: per-channel statistics over every row it
    saw, and the values of each row at the fixed sample positions, for up to ``TAP_ROWS`` rows (the
    first epoch: :meth:`close` stops it at the end of it). Labels are kept per row too (at most 16
    values each), so regression targets can be matched.
    """

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.rows = 0
        self.closed = False
        self.row_shape: tuple[int, ...] | None = None
        self.dtype = ""
        self.note = ""
        self._samples: list[Any] = []
        self._labels: list[Any] = []
        self._positions: list[int] | None = None
        self._stats: tuple[Any, ...] | None = None  # count, mean, m2, min, max per channel

    def close(self) -> None:
        self.closed = True

    def add(self, x: Any, y: Any = None) -> None:
        import numpy as np

        if self.closed or self.rows >= TAP_ROWS:
            return
        try:
            arr = np.asarray(x)
        except Exception:
            return
        if arr.ndim == 0 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            return
        arr = arr[: TAP_ROWS - self.rows]
        if self.row_shape is None:
            self.row_shape, self.dtype = tuple(int(s) for s in arr.shape[1:]), str(arr.dtype)
        elif tuple(arr.shape[1:]) != self.row_shape:
            self.note = f"batches of rows shaped {self.row_shape} and {tuple(arr.shape[1:])}: only the first kind is recorded"
            return
        n = arr.shape[0]
        flat = np.ascontiguousarray(arr).reshape(n, -1)
        if self._positions is None:
            self._positions = sample_positions(flat.shape[1])
        self._samples.append(flat[:, self._positions].astype(np.float64))
        cols = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 2 else arr.reshape(-1, 1)
        self._merge(cols)
        labels = None
        if y is not None:
            try:
                lab = np.asarray(y)
                if lab.shape[:1] == (n,) or (lab.ndim >= 1 and lab.shape[0] >= n):
                    labels = lab[:n].reshape(n, -1)[:, :16].astype(np.float64)
            except Exception:
                labels = None
        self._labels.append(labels)
        self.rows += n

    def _merge(self, cols: Any) -> None:
        import numpy as np

        stats = channel_stats(cols)
        count = cols.shape[0]
        mean = np.array([c["mean"] for c in stats])
        m2 = np.array([c["std"] ** 2 for c in stats]) * count
        low = np.array([c["min"] for c in stats])
        high = np.array([c["max"] for c in stats])
        if self._stats is None:
            self._stats = (count, mean, m2, low, high)
            return
        n0, mean0, m20, low0, high0 = self._stats
        self._stats = (*combine_moments(n0, mean0, m20, count, mean, m2), np.minimum(low0, low), np.maximum(high0, high))

    def fingerprints(self, samples_stem: Path, relative_to: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The recorded rows as ``fingerprint_array`` describes an array: ``(x, y)`` fingerprints."""
        import numpy as np

        origin_note = f"{self.origin}: {self.rows} rows of the batches trained on" + (f"; {self.note}" if self.note else "")
        if self._stats is None or self.row_shape is None or self._positions is None:
            empty = {"kind": "unsupported", "note": f"{self.origin}: no batch of numbers was seen", "origin": self.origin}
            return empty, {"kind": "none"}
        count, mean, m2, low, high = self._stats
        std = np.sqrt(np.maximum(m2, 0.0) / max(count, 1))
        samples = np.concatenate(self._samples)
        x_path = samples_stem.with_name(samples_stem.name + "_x.npy")
        x_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(x_path, samples, allow_pickle=False)
        x_fp = {
            "kind": "array",
            "shape": [int(samples.shape[0]), *self.row_shape],
            "dtype": self.dtype,
            "sha256": "",
            "channels": [
                {"mean": float(mean[j]), "std": float(std[j]), "min": float(low[j]), "max": float(high[j])}
                for j in range(len(mean))
            ],
            "sample_positions": list(self._positions),
            "samples_file": str(x_path.relative_to(relative_to)),
            "note": origin_note,
            "origin": self.origin,
        }
        y_fp: dict[str, Any] = {"kind": "none"}
        widths = {lab.shape[1] for lab in self._labels if lab is not None}
        if self._labels and all(lab is not None for lab in self._labels) and len(widths) == 1:
            labels = np.concatenate(self._labels)
            y_path = samples_stem.with_name(samples_stem.name + "_y.npy")
            np.save(y_path, labels, allow_pickle=False)
            y_fp = {
                "kind": "array",
                "shape": [int(labels.shape[0]), int(labels.shape[1])],
                "dtype": "float64",
                "sha256": "",
                "channels": [],
                "sample_positions": list(range(labels.shape[1])),
                "samples_file": str(y_path.relative_to(relative_to)),
                "note": origin_note,
                "origin": self.origin,
            }
        return x_fp, y_fp


def install(config: dict[str, Any]) -> None:
    """Set up the kernel: seeds, offline data, network refusal, and the fit/evaluate recorder."""
    job_dir = Path(config["job_dir"])
    data_dir = Path(config["data_dir"])
    seed = int(config["seed"])
    _pin_seeds(seed)
    serve_data({"data_dir": str(data_dir)})
    _install_recorder(job_dir)
    _neutralise_shell(config)


def serve_data(config: dict[str, Any]) -> None:
    """Serve the two datasets offline and refuse other network access; nothing else.

    Part of :func:`install`. On its own (no seeds, no recorder) it is what the grading benchmark's
    plain runs get, so that they execute the same notebook on the same data without grading it.
    """
    data_dir = Path(config["data_dir"])
    _install_network_guard(data_dir)
    _install_dataset_provider(data_dir)


def _pin_seeds(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


_NETWORK_MESSAGE = (
    "[grader] Network access is disabled while grading (tried to reach {target}). "
    "The grader serves the Boston Housing file and tf.keras.datasets.cifar10.load_data() offline; "
    "other downloads are not available. Use those two data sources only."
)


class GraderNetworkError(ConnectionRefusedError):
    """Raised in the student's kernel for any network access the grader does not serve."""


def _is_local(host: Any) -> bool:
    return isinstance(host, str) and (host in ("localhost", "::1", "") or host.startswith("127."))


def _install_network_guard(data_dir: Path) -> None:
    import socket

    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def _target(address: Any) -> str:
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{address[0]}:{address[1]}"
        return str(address)

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX or (isinstance(address, tuple) and _is_local(address[0])):
            return original_connect(self, address)
        raise GraderNetworkError(_NETWORK_MESSAGE.format(target=_target(address)))

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family == socket.AF_UNIX or (isinstance(address, tuple) and _is_local(address[0])):
            return original_connect_ex(self, address)
        raise GraderNetworkError(_NETWORK_MESSAGE.format(target=_target(address)))

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host is None or _is_local(host if isinstance(host, str) else host.decode(errors="replace")):
            return original_getaddrinfo(host, port, *args, **kwargs)
        raise GraderNetworkError(_NETWORK_MESSAGE.format(target=f"{host}:{port}"))

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo

    import email.message
    import io
    import urllib.request
    import urllib.response

    original_urlopen = urllib.request.urlopen

    def urlopen(url: Any, *args: Any, **kwargs: Any) -> Any:
        full = url.full_url if isinstance(url, urllib.request.Request) else str(url)
        bare = full.split("://", 1)[-1].rstrip("/")
        if bare in SERVED_URLS:
            body = (data_dir / SERVED_URLS[bare]).read_bytes()
            headers = email.message.Message()
            headers["Content-Type"] = "text/plain"
            headers["Content-Length"] = str(len(body))
            return urllib.response.addinfourl(io.BytesIO(body), headers, full, 200)
        if full.startswith("file:"):
            return original_urlopen(url, *args, **kwargs)
        raise GraderNetworkError(_NETWORK_MESSAGE.format(target=full))

    urllib.request.urlopen = urlopen


def _install_dataset_provider(data_dir: Path) -> None:
    import sys

    import numpy as np

    def load_data() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        # Fresh copies each call: a student's in-place edits must not leak into a later load.
        def load(name: str) -> Any:
            return np.load(data_dir / f"cifar10_{name}.npy", allow_pickle=False)

        return (load("x_train"), load("y_train")), (load("x_test"), load("y_test"))

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise GraderNetworkError(
            "[grader] Only CIFAR-10 (tf.keras.datasets.cifar10.load_data()) is served while grading; "
            "this exercise does not use other Keras datasets."
        )

    import keras
    import tensorflow as tf

    _ = tf.keras.datasets.cifar10  # make sure the lazily loaded tf.keras API modules exist
    for name, module in list(sys.modules.items()):
        if module is None or not name.endswith("datasets.cifar10"):
            continue
        if hasattr(module, "load_data"):
            module.load_data = load_data  # type: ignore[attr-defined]
    for other in ("cifar100", "mnist", "fashion_mnist", "imdb", "reuters", "boston_housing", "california_housing"):
        for name, module in list(sys.modules.items()):
            if module is not None and name.endswith(f"datasets.{other}") and hasattr(module, "load_data"):
                module.load_data = unavailable  # type: ignore[attr-defined]
    del keras


def _neutralise_shell(config: dict[str, Any]) -> None:
    """Back-up to the source rewrite: shell escapes reached another way still do nothing."""
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return

    def system(cmd: str, *args: Any, **kwargs: Any) -> None:
        print(f"[grader] shell command not run while grading: {cmd}")

    def getoutput(cmd: str, *args: Any, **kwargs: Any) -> list[str]:
        print(f"[grader] shell command not run while grading: {cmd}")
        return []

    ip.system = system
    ip.getoutput = getoutput
    _cap_output(ip)


KERNEL_OUTPUT_CAP = 2_000_000  # characters per cell; the runner keeps less, this stops the flood at its source


def _cap_output(ip: Any) -> None:
    """ipykernel buffers printed text without limit: drop what a cell prints beyond the cap, here in the kernel."""
    import contextlib
    import sys

    used = {"chars": 0, "noted": False}

    def capped(original: Any) -> Any:
        def write(text: str, *args: Any, **kwargs: Any) -> int:
            used["chars"] += len(text)
            if used["chars"] <= KERNEL_OUTPUT_CAP:
                return int(original(text, *args, **kwargs) or 0)
            if not used["noted"]:
                used["noted"] = True
                original("\n[grader] output limit reached: the rest of this cell's output was dropped\n")
            return len(text)

        write.grader_capped = True  # type: ignore[attr-defined]
        return write

    def before_cell(*_args: Any) -> None:
        used["chars"], used["noted"] = 0, False
        # Installed at each cell's start: the set-up cell's own output tee restores the plain write when it ends.
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not getattr(stream.write, "grader_capped", False):
                try:
                    stream.write = capped(stream.write)
                except (AttributeError, TypeError):
                    pass

    ip.events.register("pre_run_cell", before_cell)
    # IPython 9 tees every cell's printed text into its output history, in memory and without limit;
    # grading never reads that history, so do not keep it.
    ip._tee = lambda channel: contextlib.nullcontext()


def _install_recorder(job_dir: Path) -> dict[str, Any]:
    """Record every training run, however the student trains: ``fit`` (on arrays, datasets, generators,
    ``PyDataset``s), ``train_on_batch``, and custom loops that step a Keras optimizer; and every
    ``evaluate`` call. Each training run's model is saved as trained, with what it was trained on and
    which weight penalties were really part of its training loss."""
    import contextlib
    import functools
    import inspect
    import weakref

    import keras
    import numpy as np

    models_dir = job_dir / "models"
    samples_dir = job_dir / "samples"
    models_dir.mkdir(parents=True, exist_ok=True)
    records_path = job_dir / "records.jsonl"
    progress_path = job_dir / "progress.json"
    original_fit = keras.Model.fit
    original_evaluate = keras.Model.evaluate
    fit_signature = inspect.signature(original_fit)
    evaluate_signature = inspect.signature(original_evaluate)
    keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
    counters = {"fit": 0, "evaluate": 0, "model": 0, "in_fit": 0, "in_keras": 0, "probing": 0}
    taps: dict[str, RowTap | None] = {"next": None}

    def model_key(model: Any) -> str:
        if model not in keys:
            counters["model"] += 1
            keys[model] = f"model{counters['model']}"
        return keys[model]

    def current_cell() -> int | None:
        try:
            # ipykernel counts the cell before running it: while cell N runs, execution_count is
            # already N + 1 (ipykernel 7 / IPython 9, the locked versions; tests/test_bootstrap.py
            # holds the grader to it).
            return int(get_ipython().execution_count) - 1  # type: ignore[name-defined]  # noqa: F821
        except Exception:
            return None

    def write(record: dict[str, Any]) -> None:
        with open(records_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_plain) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def next_tag() -> tuple[int, str]:
        index = counters["fit"] = counters["fit"] + 1
        return index, f"fit{index:03d}"

    def record_training(
        model: Any, index: int, tag: str, *, origin: str, x_fp: dict[str, Any], y_fp: dict[str, Any],
        val_fp: dict[str, Any], seconds: float, hist: dict[str, Any], epochs_requested: int | None,
        batch_size: int | None, validation_split: float, steps: int, cell: int | None, penalty_note: str = "",
        penalties_trained: bool = True, sources: list[dict[str, Any]] | None = None, interrupted: str = "",
    ) -> None:
        counters["in_keras"] += 1  # exporting traces the model: that is not a training step to record
        try:
            artifact, fmt, error, facts = _save_model(model, models_dir / tag, job_dir)
        finally:
            counters["in_keras"] -= 1
        write(
            {
                "type": "fit",
                "index": index,
                "model_key": model_key(model),
                "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
                "cell": cell,
                "origin": origin,
                "epochs_requested": epochs_requested,
                "epochs_run": max((len(v) for v in hist.values()), default=0),
                "steps": steps,
                "batch_size": batch_size,
                "validation_split": validation_split,
                "train_seconds": seconds,
                "history": {k: [float(v) for v in vals] for k, vals in hist.items()},
                "x": x_fp,
                "y": y_fp,
                "validation_x": val_fp,
                "x_sources": sources or [],
                "artifact": artifact,
                "artifact_format": fmt,
                "artifact_error": error,
                "facts_file": facts,
                "trained_penalties": _trained_penalties(model, penalties_trained),
                "penalty_note": penalty_note,
                "penalty_probes": probes.take(model),
                "interrupted": interrupted,
                "notes": list(probes.notes),
            }
        )

    # ---- fit -----------------------------------------------------------------------------------

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = fit_signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
        except TypeError:
            return original_fit(self, *args, **kwargs)
        loops.flush()  # a model trained by hand before this fit is recorded first
        models.add(self)
        index, tag = next_tag()
        x = params.get("x")
        tap = RowTap(_stream_origin(x)) if is_stream(x) else None
        if tap is None:
            x_fp = fingerprint_array(_named_inputs(x), samples_dir / f"{tag}_x.npy", job_dir)
            y_fp = fingerprint_array(_named_inputs(params.get("y")), samples_dir / f"{tag}_y.npy", job_dir)
        val = params.get("validation_data")
        val_x = _named_inputs(val[0]) if isinstance(val, (tuple, list)) and val else None
        val_fp = fingerprint_array(val_x, samples_dir / f"{tag}_valx.npy", job_dir)
        started = time.perf_counter()
        counters["in_fit"] += 1
        counters["in_keras"] += 1
        taps["next"] = tap
        interrupted, failure = "", None
        try:
            call = fit_signature.bind(self, *args, **kwargs)  # what the student passed, no defaults added
            _add_progress(call, progress_path, index, _int_or_none(params.get("epochs")), keras, tap)
            history = original_fit(*call.args, **call.kwargs)
        except BaseException as exc:  # an interrupt at the cell's time limit, or an error: recorded, then raised
            interrupted, failure = _interruption(exc), exc
            history = getattr(self, "history", None)
        finally:
            taps["next"] = None
            counters["in_fit"] -= 1
            counters["in_keras"] -= 1
        if failure is not None:
            with contextlib.suppress(BaseException):
                if interrupted_fit_worth_recording(history):
                    record_fit(self, x, index, tag, tap, x_fp if tap is None else None, y_fp if tap is None else None,
                               val_fp, started, history, params, interrupted)
            raise failure
        record_fit(self, x, index, tag, tap, x_fp if tap is None else None, y_fp if tap is None else None,
                   val_fp, started, history, params, "")
        return history

    def interrupted_fit_worth_recording(history: Any) -> bool:
        """An interrupted fit is recorded when it ran at least one epoch: what it trained is then judged."""
        return bool(getattr(history, "history", None)) and any(len(v) for v in history.history.values())

    def record_fit(
        model: Any, x: Any, index: int, tag: str, tap: RowTap | None, x_fp: Any, y_fp: Any, val_fp: Any,
        started: float, history: Any, params: dict[str, Any], interrupted: str,
    ) -> None:
        seconds = time.perf_counter() - started
        sources: list[dict[str, Any]] = []
        if tap is not None:
            x_fp, y_fp = tap.fingerprints(samples_dir / tag, job_dir)
            for i, source in enumerate(_stream_sources(x)):
                sources.append(fingerprint_array(source, samples_dir / f"{tag}_src{i}.npy", job_dir))
        if keras_train_step(model) and not probes.collected.get(model):
            counters["in_keras"] += 1
            try:
                shape = x_fp.get("shape") if isinstance(x_fp, dict) else None
                probes.probe_losses(model, list(shape[1:]) if shape else None)
            except Exception:
                pass  # measuring is best effort: the record then keeps the penalties the variables carried
            finally:
                counters["in_keras"] -= 1
        record_training(
            model, index, tag, origin=tap.origin if tap else "array", x_fp=x_fp, y_fp=y_fp, val_fp=val_fp,
            seconds=seconds, hist=getattr(history, "history", {}) or {},
            epochs_requested=_int_or_none(params.get("epochs")), batch_size=_int_or_none(params.get("batch_size")),
            validation_split=float(params.get("validation_split") or 0.0), steps=0, cell=current_cell(),
            sources=sources, interrupted=interrupted,
        )

    # Batches of a stream are recorded as Keras's data adapter hands them to the training loop.
    from keras.src.trainers import data_adapters

    original_adapter = data_adapters.get_data_adapter

    def get_data_adapter(*args: Any, **kwargs: Any) -> Any:
        adapter = original_adapter(*args, **kwargs)
        tap, taps["next"] = taps["next"], None  # the training data's adapter comes first; validation's is not tapped
        if tap is not None:
            _tap_adapter(adapter, tap)
        return adapter

    # ---- evaluate and the other Keras loops --------------------------------------------------------

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        tap, params = None, None
        if not counters["in_fit"]:
            with contextlib.suppress(Exception):
                params = dict(evaluate_signature.bind(self, *args, **kwargs).arguments)
                tap = RowTap(_stream_origin(params.get("x"))) if is_stream(params.get("x")) else None
        counters["in_keras"] += 1
        taps["next"] = tap  # a stream's batches are recorded as evaluate draws them, like fit's
        try:
            result = original_evaluate(self, *args, **kwargs)
        finally:
            taps["next"] = None
            counters["in_keras"] -= 1
        if counters["in_fit"] or params is None:
            return result  # fit's own validation passes are not the student's evaluate calls
        try:
            index = counters["evaluate"] = counters["evaluate"] + 1
            tag = f"eval{index:03d}"
            values = result if isinstance(result, (list, tuple)) else [result]
            names = [str(n) for n in getattr(self, "metrics_names", [])]
            if isinstance(result, dict):
                names, values = [str(k) for k in result], list(result.values())
            if tap is not None:
                x_fp, y_fp = tap.fingerprints(samples_dir / tag, job_dir)
            else:
                x_fp = fingerprint_array(_named_inputs(params.get("x")), samples_dir / f"{tag}_x.npy", job_dir)
                y_fp = fingerprint_array(_named_inputs(params.get("y")), samples_dir / f"{tag}_y.npy", job_dir)
            write(
                {
                    "type": "evaluate",
                    "index": index,
                    "model_key": model_key(self),
                    "cell": current_cell(),
                    "x": x_fp,
                    "y": y_fp,
                    "returned": [float(np.asarray(v)) for v in values],
                    "metric_names": names,
                }
            )
        except Exception:
            pass  # recording is best effort; the student's call must behave as without the grader
        return result

    def inside_keras(original: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            counters["in_keras"] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                counters["in_keras"] -= 1

        wrapper.__name__ = getattr(original, "__name__", "wrapper")
        wrapper.__doc__ = getattr(original, "__doc__", None)
        return wrapper

    # ---- train_on_batch and custom training loops ----------------------------------------------------

    class Loops:
        """Models trained outside ``fit``: by ``train_on_batch``, or by a loop of the student's own that
        calls the model and then a Keras optimizer's ``apply``/``apply_gradients``. Each such model is
        recorded as one training run at the end of the cell that trained it (or before its next fit)."""

        def __init__(self) -> None:
            self.state: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

        def of(self, model: Any, origin: str) -> dict[str, Any]:
            st = self.state.get(model)
            if st is None:
                st = {"origin": origin, "tap": RowTap(origin), "steps": 0, "pending": None, "penalty_gradients": 0,
                      "penalised_steps": 0, "started": None, "last": None, "cell": None}
                self.state[model] = st
            return st

        def note_call(self, model: Any, x: Any) -> None:
            st = self.of(model, "custom_loop")
            st["pending"] = x

        def step(self, model: Any, origin: str, x: Any = None, y: Any = None) -> None:
            st = self.of(model, origin)
            st["origin"] = origin
            now = time.perf_counter()
            st["started"] = st["started"] or now
            st["last"] = now
            st["steps"] += 1
            if st["penalty_gradients"]:
                st["penalised_steps"] += 1
            st["penalty_gradients"] = 0
            st["cell"] = current_cell()
            rows = x if x is not None else st["pending"]
            st["pending"] = None
            if rows is not None:
                st["tap"].add(_numpy(rows), _numpy(y) if y is not None else None)

        def flush(self, interrupted: str = "") -> None:
            for model, st in list(self.state.items()):
                if not st["steps"]:
                    continue
                self.state.pop(model, None)
                try:
                    index, tag = next_tag()
                    x_fp, y_fp = st["tap"].fingerprints(samples_dir / tag, job_dir)
                    # A loop trained its penalties when their gradient reached most of its optimizer steps.
                    trained = st["origin"] == "train_on_batch" or st["penalised_steps"] * 2 >= st["steps"]
                    record_training(
                        model, index, tag, origin=st["origin"], x_fp=x_fp, y_fp=y_fp, val_fp={"kind": "none"},
                        seconds=float(st["last"] - st["started"]), hist={}, epochs_requested=None, batch_size=None,
                        validation_split=0.0, steps=int(st["steps"]), cell=st["cell"], penalties_trained=trained,
                        penalty_note="" if trained else "the training loop never added model.losses to its loss",
                        interrupted=interrupted if st["cell"] == current_cell() else "",
                    )
                except Exception:
                    pass  # recording is best effort

    loops = Loops()

    original_train_on_batch = keras.Model.train_on_batch

    def train_on_batch(self: Any, x: Any, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        counters["in_keras"] += 1
        try:
            result = original_train_on_batch(self, x, y, *args, **kwargs)
        finally:
            counters["in_keras"] -= 1
        try:
            loops.step(self, "train_on_batch", x, y)
        except Exception:
            pass
        return result

    original_call = keras.Model.__call__

    def model_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        models.add(self)
        if counters["in_keras"]:
            return original_call(self, *args, **kwargs)
        try:
            # A call traced where no tape records (an export, a prediction function) trains nothing: it gets
            # no observer op, so an exported inference graph holds none of the recorder's Python calls.
            if tf.executing_eagerly() or tape_recording():
                x = _primary(args[0] if args else kwargs.get("inputs"))
                loops.of(self, "custom_loop")  # known now: a step traced next must find the model
                _observe(x, functools.partial(_call_seen, weakref.ref(self)))
        except Exception:
            pass
        out = original_call(self, *args, **kwargs)
        try:
            return probes.gate(self, out)
        except Exception:
            return out

    def _call_seen(ref: Any, value: Any) -> None:
        model = ref()
        if model is not None:
            loops.note_call(model, value)

    original_apply = keras.optimizers.Optimizer.apply

    def apply(self: Any, grads: Any, trainable_variables: Any = None) -> Any:
        if not counters["in_keras"]:
            try:
                variables = list(trainable_variables) if trainable_variables is not None else []
                model = _stepped_model(variables, list(loops.state.keys()))
                if model is not None:
                    if _in_xla_function():
                        probes.note_xla_step(model)  # recorded from the call's arguments (XLA cannot call Python)
                    _observe(None, functools.partial(_step_seen, weakref.ref(model)))
            except Exception:
                pass
        return original_apply(self, grads, trainable_variables)

    def _step_seen(ref: Any, _value: Any = None) -> None:
        model = ref()
        if model is not None:
            loops.step(model, "custom_loop")

    losses_property = keras.Model.losses

    def losses(self: Any) -> Any:
        values = losses_property.fget(self)
        if counters["in_keras"] or not values:
            return values
        try:
            # Each penalty passes through an identity whose gradient says so: a loop whose loss includes
            # model.losses sends gradient through it before its optimizer step; reading or printing the
            # losses, or adding them outside the GradientTape, does not.
            loops.of(self, "custom_loop")
            seen = functools.partial(_penalty_gradient_seen, weakref.ref(self))
            return [_gradient_marker(v, seen) for v in values]
        except Exception:
            return values

    def _penalty_gradient_seen(ref: Any, _value: Any = None) -> None:
        model = ref()
        if model is not None:
            loops.of(model, "custom_loop")["penalty_gradients"] += 1

    import tensorflow as tf
    from tensorflow.python.eager import record
    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    tape_recording = record.could_possibly_record

    models: Any = weakref.WeakSet()
    probes = PenaltyProbes(
        tf, keras, models,
        step_model=lambda model, origin, x, y: loops.step(model, origin, x, y),
        steps_of=lambda model: int(loops.state[model]["steps"]) if model in loops.state else 0,
        in_fit=lambda: counters["in_fit"] > 0,
    )
    original_tape_init = tf.GradientTape.__init__
    original_gradient = tf.GradientTape.gradient
    original_function_call = polymorphic_function.Function.__call__

    def tape_init(self: Any, persistent: bool = False, watch_accessed_variables: bool = True) -> None:
        # Kept persistent while a probe may be due, so the penalty's gradient can be taken once more.
        if not persistent and tf.executing_eagerly() and probes.eager_wanted():
            persistent = True
        original_tape_init(self, persistent=persistent, watch_accessed_variables=watch_accessed_variables)
        probes.tape_serial += 1
        self._grader_serial = probes.tape_serial

    original_tape_enter = tf.GradientTape.__enter__
    original_tape_exit = tf.GradientTape.__exit__

    def tape_enter(self: Any) -> Any:
        # In a function being traced, the ops the tape records are those made while it is entered.
        result = original_tape_enter(self)
        if not tf.executing_eagerly():
            graph = tf.compat.v1.get_default_graph()
            self._grader_span = (graph, _last_op_id(graph), float("inf"))
        return result

    def tape_exit(self: Any, *exc: Any) -> Any:
        span = getattr(self, "_grader_span", None)
        if span is not None and span[2] == float("inf"):
            self._grader_span = (span[0], span[1], _last_op_id(span[0]))
        return original_tape_exit(self, *exc)

    def gradient(self: Any, target: Any, sources: Any, output_gradients: Any = None,
                 unconnected_gradients: Any = tf.UnconnectedGradients.NONE) -> Any:
        result = original_gradient(self, target, sources, output_gradients, unconnected_gradients)
        if output_gradients is None and not counters["probing"]:
            counters["probing"] += 1
            try:
                probes.on_gradient(self, original_gradient, target, sources)
            except Exception:
                pass  # measuring is best effort; the student's gradients are returned as computed
            finally:
                counters["probing"] -= 1
        return result

    def function_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return probes.call(original_function_call, self, args, kwargs)

    replaced: list[tuple[Any, str, Any]] = [
        (keras.Model, name, keras.Model.__dict__.get(name))
        for name in ("fit", "evaluate", "train_on_batch", "__call__", "losses", "predict", "test_on_batch", "predict_on_batch")
    ] + [(keras.optimizers.Optimizer, "apply", keras.optimizers.Optimizer.__dict__.get("apply")),
         (data_adapters, "get_data_adapter", original_adapter),
         (tf.GradientTape, "__init__", original_tape_init), (tf.GradientTape, "gradient", original_gradient),
         (tf.GradientTape, "__enter__", original_tape_enter), (tf.GradientTape, "__exit__", original_tape_exit),
         (polymorphic_function.Function, "__call__", original_function_call)]
    keras.Model.fit = fit  # type: ignore[method-assign]
    keras.Model.evaluate = evaluate  # type: ignore[method-assign]
    keras.Model.train_on_batch = train_on_batch  # type: ignore[method-assign]
    keras.Model.__call__ = model_call  # type: ignore[method-assign]
    keras.Model.losses = property(losses)  # type: ignore[method-assign,assignment]
    keras.optimizers.Optimizer.apply = apply  # type: ignore[method-assign]
    for name in ("predict", "test_on_batch", "predict_on_batch"):
        setattr(keras.Model, name, inside_keras(getattr(keras.Model, name)))
    data_adapters.get_data_adapter = get_data_adapter
    tf.GradientTape.__init__ = tape_init  # type: ignore[method-assign]
    tf.GradientTape.gradient = gradient  # type: ignore[method-assign]
    tf.GradientTape.__enter__ = tape_enter  # type: ignore[method-assign]
    tf.GradientTape.__exit__ = tape_exit  # type: ignore[method-assign]
    polymorphic_function.Function.__call__ = function_call  # type: ignore[method-assign]

    def flush_after_cell(result: Any = None, *_args: Any) -> None:
        error = getattr(result, "error_in_exec", None)
        loops.flush(_interruption(error) if error is not None else "")

    try:
        get_ipython().events.register("post_run_cell", flush_after_cell)  # type: ignore[name-defined]  # noqa: F821
    except Exception:
        pass

    def uninstall() -> None:
        """Put back what was replaced (for tests that record in their own process)."""
        for owner, name, value in replaced:
            if value is None:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)

    return {"flush": loops.flush, "uninstall": uninstall}


# ---- weight penalties measured on the training steps themselves ------------------------------------

PROBE_LIMIT = 12  # probed steps per model and training run: its 1st, 2nd, 4th, 8th, ... step
# Ops through which a loss is only summed, scaled and reshaped: a weight penalty reaches the training loss
# through these, added to the data term. What enters them from anything that depends on the data is the
# data term (stopped); what enters them from weights alone is a penalty term.
AGGREGATING_OPS = frozenset({
    "AddV2", "Add", "AddN", "Sub", "Neg", "Identity", "IdentityN", "Snapshot", "Cast", "Pack", "ConcatV2",
    "Sum", "Mean", "Reshape", "ExpandDims", "Squeeze", "Mul", "RealDiv", "Div", "DivNoNan", "MulNoNan",
})
METADATA_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "BroadcastArgs", "BroadcastGradientArgs"})
DATA_OPS = frozenset({
    "IteratorGetNext", "IteratorGetNextSync", "OptionalGetValue", "IteratorGetNextAsOptional",
    "MultiDeviceIteratorGetNextFromShard",
})


def probe_due(step: int) -> bool:
    """Whether a model's ``step``-th optimizer step (1 = its first) is probed: the powers of two."""
    return step >= 1 and step & (step - 1) == 0


def penalty_sums(p: Any, w: Any) -> list[float]:
    """``[n, Σp·s, Σp·w, Σs², Σs·w, Σw², Σp²]`` with ``s = sign(w)``: what fitting ``p = a*s + b*w`` needs."""
    import numpy as np

    p = np.asarray(p, dtype=np.float64).reshape(-1)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    s = np.sign(w)
    return [float(p.size), float(p @ s), float(p @ w), float(s @ s), float(s @ w), float(w @ w), float(p @ p)]


def _data_dependent(tensor: Any, memo: dict[Any, bool]) -> bool:
    """Whether a tensor of a traced function depends on the data it is fed: its non-scalar arguments, the
    batches it draws from an iterator; not on variables, constants, shapes or random numbers alone."""
    todo = [tensor]
    while todo:
        t = todo[-1]
        key = t.name
        if key in memo:
            todo.pop()
            continue
        op = t.op
        if op.type == "Placeholder":
            rank = t.shape.rank
            memo[key] = t.dtype.name not in ("resource", "variant") and (rank is None or rank > 0)
            todo.pop()
            continue
        if op.type in DATA_OPS:
            memo[key] = True
            todo.pop()
            continue
        if op.type in METADATA_OPS or not op.inputs:
            memo[key] = False
            todo.pop()
            continue
        pending = [i for i in op.inputs if i.name not in memo]
        if pending:
            todo.extend(pending)
            continue
        memo[key] = any(memo[i.name] for i in op.inputs)
        todo.pop()
    return memo[tensor.name]


def penalty_stops(target: Any, span: tuple[int, int] | None = None) -> list[Any]:
    """The data terms of a traced loss: walking down from ``target`` through the ops that only sum, scale and
    reshape it, every input that depends on the data. Stopping the gradient there leaves what the weight
    penalty terms (inputs that depend on weights alone) send each weight.

    ``span``: the ids of the graph's ops the tape recorded (made while it was recording), when known. What
    was computed outside it sends the tape's gradient nothing, so it is stopped too.
    """
    memo: dict[Any, bool] = {}
    stops: list[Any] = []
    if span is not None:
        start, end = span
        for op in target.graph.get_operations():
            if not start < op._id <= end and op.type not in ("Placeholder", "Const", "VarHandleOp"):
                stops.extend(t for t in op.outputs if t.dtype.is_floating)
    seen, todo = set(), [target]
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        if t.op.type in AGGREGATING_OPS:
            todo.extend(t.op.inputs)
        elif _data_dependent(t, memo):
            stops.append(t)
    return stops


class PenaltyProbes:
    """What the weight penalties in a model's training loss add to each weight's gradient, measured on a few
    of its training steps (``probe_due``), whatever wrote them: ``kernel_regularizer`` (built in, a function,
    a ``Regularizer`` subclass), ``add_loss``, or a term of a hand-written loss.

    - A traced step (Keras's own ``fit``, a ``tf.function`` loop, an XLA-compiled one): when its
      ``GradientTape.gradient`` is traced, the gradient of the loss with its data terms stopped
      (``penalty_stops``) is added to the graph, and on probed steps a ``tf.cond`` stores its sums
      (``penalty_sums``) in variables, read after the call.
    - An eager loop: the tape is kept persistent on probed steps and the model's outputs pass through a gate;
      the gradient is taken once more with the gate shut, so nothing reaches the weights through the outputs.

    Also runs every ``tf.function`` call: an XLA-compiled one that has no deterministic kernel under the op
    determinism the grader pins is run again with determinism off (noted), and the models that XLA steps
    train are recorded from the call's arguments (XLA cannot call back into Python).
    """

    def __init__(
        self, tf: Any, keras: Any, models: Any, step_model: Any, steps_of: Any, in_fit: Any = lambda: False
    ) -> None:
        self.in_fit = in_fit  # () -> whether Keras's fit is running
        self.tf = tf
        self.keras = keras
        self.models = models  # every model called so far (a WeakSet)
        self.step_model = step_model  # (model, origin, x, y) -> None: one step of a model trained outside fit
        self.steps_of = steps_of  # model -> its optimizer steps recorded so far outside fit
        self.stack: list[Any] = []  # tf.function objects being called, outermost first
        self.sites: dict[int, list[dict[str, Any]]] = {}  # id(outermost function) -> its probe sites
        self.xla_steps: dict[int, Any] = {}  # id(outermost function) -> models its XLA steps train
        self.keep: dict[int, Any] = {}  # id -> the function (so that ids stay unique)
        self.collected: Any = weakref.WeakKeyDictionary()  # model -> probes since its last record
        self.gates: Any = weakref.WeakKeyDictionary()  # model -> its eager gate state
        self.notes: list[str] = []
        self.tape_serial = 0

    # -- which model, which variables ------------------------------------------------------------

    def model_of(self, variables: list[Any]) -> Any:
        return _stepped_model(variables, list(self.models))

    def _tf_variable(self, v: Any) -> Any:
        if isinstance(v, self.keras.Variable):
            return v.value
        return v if isinstance(v, self.tf.Variable) else None

    def _variables(self, model: Any, sources: list[Any]) -> list[tuple[Any, Any]]:
        """The (source, tf.Variable) pairs of ``sources`` that are the model's trainable variables."""
        own = {id(v) for v in model.trainable_variables}
        out = []
        for s in sources:
            tv = self._tf_variable(s)
            if tv is not None and (id(s) in own or any(id(tv) == id(self._tf_variable(o)) for o in model.trainable_variables)):
                out.append((s, tv))
        return out

    def _describe(self, pairs: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        out = []
        for source, tv in pairs:
            reg = getattr(source, "regularizer", None)
            declared = "" if reg is None else (getattr(reg, "__name__", None) or type(reg).__name__)
            out.append({"path": str(getattr(source, "path", None) or tv.name), "shape": [int(d) for d in tv.shape],
                        "declared": str(declared)})
        return out

    def wants(self, model: Any) -> bool:
        return len(self.collected.get(model, [])) < PROBE_LIMIT

    def add(self, model: Any, probe: dict[str, Any]) -> None:
        self.collected.setdefault(model, []).append(probe)

    def take(self, model: Any) -> list[dict[str, Any]]:
        return self.collected.pop(model, [])

    # -- tf.GradientTape ------------------------------------------------------------------------------

    def eager_wanted(self) -> bool:
        """Whether a tape created now may serve a probe: some model trained outside fit is due one."""
        gates = list(self.gates.items())
        if not gates:
            return True
        return any(probe_due(self.steps_of(m) + 1) and self.wants(m) for m, _ in gates)

    def gate(self, model: Any, value: Any) -> Any:
        """A model's outputs in an eager loop, through an identity whose gradient can be shut."""
        tf = self.tf
        if not (tf.executing_eagerly() and probe_due(self.steps_of(model) + 1) and self.wants(model)):
            return value
        state = self.gates.setdefault(model, {"closed": False, "serial": -1})
        state["serial"] = self.tape_serial

        @tf.custom_gradient  # type: ignore[misc]
        def shut(x: Any) -> Any:
            def grad(upstream: Any) -> Any:
                return tf.zeros_like(upstream) if state["closed"] else upstream

            return tf.identity(x), grad

        def through(t: Any) -> Any:
            return shut(t) if isinstance(t, tf.Tensor) and t.dtype.is_floating else t

        return tf.nest.map_structure(through, value)

    def on_gradient(self, tape: Any, original: Any, target: Any, sources: Any) -> None:
        tf = self.tf
        if not isinstance(target, tf.Tensor) or not target.dtype.is_floating:
            return
        flat = tf.nest.flatten(sources)
        model = self.model_of(list(flat))
        if model is None:
            return
        pairs = self._variables(model, flat)
        if not pairs:
            return
        if tf.executing_eagerly():
            self._eager(tape, original, target, model, pairs)
        else:
            self._traced(tape, target, model, pairs)

    def _eager(self, tape: Any, original: Any, target: Any, model: Any, pairs: list[tuple[Any, Any]]) -> None:
        state = self.gates.get(model)
        if state is None or state["serial"] != getattr(tape, "_grader_serial", None) or not tape._persistent:
            return
        step = self.steps_of(model) + 1
        if not (probe_due(step) and self.wants(model)):
            return
        state["closed"] = True
        try:
            grads = original(tape, target, [tv for _, tv in pairs], unconnected_gradients=self.tf.UnconnectedGradients.ZERO)
        finally:
            state["closed"] = False
        variables = self._describe(pairs)
        for entry, (_, tv), p in zip(variables, pairs, grads):
            entry["sums"] = penalty_sums(p.numpy(), tv.numpy())
        self.add(model, {"step": step, "mode": "eager", "variables": variables})

    def _traced(self, tape: Any, target: Any, model: Any, pairs: list[tuple[Any, Any]]) -> None:
        tf = self.tf
        if not self.stack or (self.in_fit() and keras_train_step(model)):
            return  # Keras's own step adds model.losses: measured once the fit ends (probe_losses)
        mode = "xla" if _in_xla_function() else "graph"
        # Computed on every step (a tf.cond branch cannot take gradients of the graph around it), but only
        # along the penalty terms: the same ops as the student's own gradient of them, which grappler merges.
        # A variable no penalty reaches gets None here and zeros inside the branch, so unpenalised models
        # pay nothing.
        span = getattr(tape, "_grader_span", None)
        recorded = span[1:] if span is not None and span[0] is target.graph else None
        grads = tf.gradients(target, [tv for _, tv in pairs], stop_gradients=penalty_stops(target, recorded))
        from tensorflow.python.ops.resource_variable_ops import ResourceVariable

        # Made outside the function being traced, and directly: tf.function refuses new variables through
        # tf.Variable on any trace but its first, and these belong to the grader, not to the function.
        with tf.init_scope():
            flag = ResourceVariable(True, trainable=False, name="grader_probe_flag")
            sums = ResourceVariable(tf.zeros([len(pairs), 7], tf.float64), trainable=False, name="grader_probe_sums")
            hits = ResourceVariable(tf.constant(0, tf.int64), trainable=False, name="grader_probe_hits")

        def store() -> Any:
            rows = []
            for (_, tv), p in zip(pairs, grads):
                w = tf.reshape(tf.cast(tf.convert_to_tensor(tv), tf.float64), [-1])
                g = tf.zeros_like(w) if p is None else tf.reshape(tf.cast(tf.convert_to_tensor(p), tf.float64), [-1])
                s = tf.sign(w)
                n = tf.cast(tf.size(w), tf.float64)
                dots = [tf.reduce_sum(a * b) for a, b in ((g, s), (g, w), (s, s), (s, w), (w, w), (g, g))]
                rows.append(tf.stack([n, *dots]))
            with tf.control_dependencies([sums.assign(tf.stack(rows))]):
                return tf.identity(hits.assign_add(1))

        tf.cond(flag, store, lambda: tf.identity(hits.read_value()))
        outer = self.stack[0]
        self.keep[id(outer)] = outer
        self.sites.setdefault(id(outer), []).append({
            "model": weakref.ref(model), "variables": self._describe(pairs), "flag": flag, "sums": sums,
            "hits": hits, "seen": 0, "calls": 0, "mode": mode, "armed": True,
        })

    def probe_losses(self, model: Any, row_shape: list[int] | None) -> None:
        """After a ``fit`` by Keras's own training step, whose loss is the compiled loss plus ``model.losses``:
        what those penalty terms add to each trainable variable's gradient, at the trained weights.

        The model is called (``training=False``) on two batches of random inputs, so that terms a layer adds
        with ``add_loss`` in its ``call`` are there; a term whose gradient differs between the two depends on
        the data (an activity penalty) and is no weight penalty, so it is left out."""
        import numpy as np

        tf = self.tf
        pairs = self._variables(model, list(model.trainable_variables))
        if not pairs:
            return
        rng = np.random.default_rng(0)
        passes = []
        for _ in range(2):
            batch = _random_like_input(tf, model, row_shape, rng)
            with tf.GradientTape(persistent=True) as tape:
                if batch is not None:
                    with contextlib.suppress(Exception):
                        model(batch, training=False)
                terms = [t for t in model.losses if isinstance(t, tf.Tensor) and t.dtype.is_floating]
            passes.append([
                [np.asarray(g.numpy(), dtype=np.float64) for g in tape.gradient(
                    term, [tv for _, tv in pairs], unconnected_gradients=tf.UnconnectedGradients.ZERO
                )]
                for term in terms
            ])
            del tape
        first, second = passes
        weights = [tv.numpy() for _, tv in pairs]
        total = [np.zeros(w.shape, dtype=np.float64) for w in weights]
        if len(first) == len(second):
            for a, b in zip(first, second):
                if all(np.allclose(x, y, rtol=1e-6, atol=0.0) for x, y in zip(a, b)):
                    total = [t + x for t, x in zip(total, a)]
        variables = self._describe(pairs)
        for entry, p, w in zip(variables, total, weights):
            entry["sums"] = penalty_sums(p, w)
        iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
        steps = int(iterations.numpy()) if iterations is not None else 1
        self.add(model, {"step": max(steps, 1), "mode": "losses", "variables": variables})

    # -- tf.function calls ---------------------------------------------------------------------------

    def note_xla_step(self, model: Any) -> None:
        if self.stack:
            outer = self.stack[0]
            self.keep[id(outer)] = outer
            self.xla_steps.setdefault(id(outer), weakref.WeakSet()).add(model)

    def call(self, original: Any, function: Any, args: Any, kwargs: Any) -> Any:
        tf = self.tf
        outer = not self.stack and tf.executing_eagerly()
        self.stack.append(function)
        try:
            if outer:
                self._arm(function)
            try:
                result = original(function, *args, **kwargs)
            except tf.errors.UnimplementedError as exc:
                if not (outer and "determinis" in str(exc) and _determinism_on()):
                    raise
                _determinism_off()
                self.notes.append(
                    "op determinism was switched off for a jit-compiled (XLA) step: XLA has no deterministic kernel "
                    "for one of its operations, so this training is not bit-for-bit reproducible"
                )
                result = original(function, *args, **kwargs)
        finally:
            self.stack.pop()
        if outer:
            with contextlib.suppress(Exception):
                self._collect(function, args, kwargs)
        return result

    def _arm(self, function: Any) -> None:
        for site in self.sites.get(id(function), []):
            model = site["model"]()
            want = model is not None and probe_due(site["calls"] + 1) and self.wants(model)
            if want != site["armed"]:
                site["flag"].assign(want)
                site["armed"] = want

    def _collect(self, function: Any, args: Any, kwargs: Any) -> None:
        for site in self.sites.get(id(function), []):
            site["calls"] += 1
            if not site["armed"]:
                continue
            hits = int(site["hits"].numpy())
            if hits == site["seen"]:
                continue  # armed, but this call ran another trace of the function
            site["seen"] = hits
            model = site["model"]()
            if model is None:
                continue
            sums = site["sums"].numpy().tolist()
            variables = [dict(v, sums=row) for v, row in zip(site["variables"], sums)]
            self.add(model, {"step": site["calls"], "mode": site["mode"], "variables": variables})
        for model in list(self.xla_steps.get(id(function), [])):
            x, y = _batch_of(args, kwargs)
            self.step_model(model, "xla_step", x, y)


def keras_train_step(model: Any) -> bool:
    """Whether the model trains with Keras's own ``train_step`` (its loss: the compiled loss + ``model.losses``)."""
    step = getattr(type(model), "train_step", None)
    return getattr(step, "__qualname__", "").startswith("TensorFlowTrainer.")


def _random_like_input(tf: Any, model: Any, row_shape: list[int] | None, rng: Any) -> Any:
    """Two rows of random inputs in the structure the model takes (its symbolic inputs), or shaped as the
    rows it was trained on; None when neither is known."""
    inputs = getattr(model, "_inputs_struct", None)
    if inputs is None:
        with contextlib.suppress(Exception):
            inputs = model.inputs
            inputs = inputs[0] if isinstance(inputs, list) and len(inputs) == 1 else inputs

    def rows(shape: list[int], dtype: Any = "float32") -> Any:
        return tf.cast(tf.constant(rng.normal(size=[2, *shape])), dtype)

    if inputs is not None:
        with contextlib.suppress(Exception):
            return tf.nest.map_structure(
                lambda t: rows([int(d) for d in t.shape[1:]], getattr(t, "dtype", "float32")), inputs
            )
    if row_shape:
        return rows(list(row_shape))
    return None


def _last_op_id(graph: Any) -> int:
    """The id of the newest op of a graph (ids only grow)."""
    return max((op._id for op in graph.get_operations()), default=0)


def _determinism_on() -> bool:
    try:
        from tensorflow.python.framework import config

        return bool(config.is_op_determinism_enabled())
    except Exception:
        return False


def _determinism_off() -> None:
    from tensorflow.python.framework import config

    config.disable_op_determinism()


def _batch_of(args: Any, kwargs: Any) -> tuple[Any, Any]:
    """The input batch and the targets among a training step's arguments: the first two array-like ones
    (a dict or list of named inputs counts as its largest array)."""
    found = []
    for value in [*args, *kwargs.values()]:
        value = _primary(value)
        if value is not None and hasattr(value, "shape") and len(getattr(value, "shape", ()) or ()) >= 1:
            found.append(value)
        if len(found) == 2:
            break
    x = _numpy(found[0]) if found else None
    y = _numpy(found[1]) if len(found) > 1 else None
    return x, y


def _interruption(exc: BaseException) -> str:
    """Why training stopped, in words: the runner interrupts a cell that reaches its time limit."""
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt: interrupted (the grader interrupts a cell that reaches its time limit)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _named_inputs(value: Any) -> Any:
    """Inputs given by name (a dict) or as a list or tuple of arrays: the array that holds the rows (the
    largest); anything else as it is."""
    if isinstance(value, dict) or (
        isinstance(value, (list, tuple)) and value and all(hasattr(v, "shape") for v in value)
    ):
        return _primary(value)
    return value


def _numpy(value: Any) -> Any:
    import numpy as np

    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def _observe(value: Any, callback: Any) -> None:
    """Call ``callback(value as NumPy)`` now when running eagerly; inside a ``tf.function`` being traced,
    add an op that calls it each time the traced function runs (so compiled training steps are seen too)."""
    import tensorflow as tf

    if value is not None and not (isinstance(value, tf.Tensor) or hasattr(value, "__array__")):
        return
    if tf.executing_eagerly() and not (isinstance(value, tf.Tensor) and not hasattr(value, "numpy")):
        callback(_numpy(value) if value is not None else None)
        return

    def run(*tensors: Any) -> Any:
        import numpy as np

        try:
            callback(tensors[0].numpy() if tensors else None)
        except Exception:
            pass
        return np.int64(0)

    if _in_xla_function():
        return  # XLA cannot compile a Python call: a jit-compiled step is left as the student wrote it
    tf.py_function(run, [value] if value is not None else [], Tout=tf.int64)


def _in_xla_function() -> bool:
    """Whether a function being traced now is compiled by XLA (``tf.function(jit_compile=True)``)."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:
        return False


def _gradient_marker(tensor: Any, callback: Any) -> Any:
    """``tensor`` unchanged, but computing a gradient through it calls ``callback`` (each time, also
    inside a ``tf.function``)."""
    import tensorflow as tf

    @tf.custom_gradient  # type: ignore[misc]
    def mark(x: Any) -> Any:
        def grad(upstream: Any) -> Any:
            _observe(None, callback)
            return upstream

        return tf.identity(x), grad

    return mark(tensor)


def _stepped_model(variables: list[Any], models: list[Any]) -> Any:
    """The outermost model among ``models`` whose trainable variables an optimizer step updates."""
    ids = {id(v) for v in variables}
    best, best_count = None, 0
    for model in models:
        try:
            count = sum(1 for v in model.trainable_variables if id(v) in ids)
        except Exception:
            continue
        if count > best_count:
            best, best_count = model, count
    return best


def _stream_origin(x: Any) -> str:
    name = type(x).__name__
    module = type(x).__module__ or ""
    if hasattr(x, "element_spec"):
        return "tf.data"
    if "preprocessing.image" in module or name in ("NumpyArrayIterator", "DirectoryIterator", "DataFrameIterator"):
        return "ImageDataGenerator"
    if hasattr(x, "__next__"):
        return "generator"
    return "PyDataset"


SOURCE_LIMIT = 4  # source arrays fingerprinted per stream


def _stream_sources(stream: Any) -> list[Any]:
    """The arrays a stream draws its rows from, where it says: an ``ImageDataGenerator`` iterator's
    ``x``, and the tensors a ``tf.data`` pipeline was sliced from (``from_tensor_slices``, through maps,
    shuffles, batches, zips and concatenations). Its batches may be augmented; these rows are not."""
    import numpy as np

    found: list[Any] = []
    own = getattr(stream, "x", None)
    if isinstance(own, np.ndarray) and own.ndim >= 2:
        return [own]
    if not hasattr(stream, "element_spec"):
        return found
    todo, seen = [stream], 0
    while todo and len(found) < SOURCE_LIMIT and seen < 200:
        dataset = todo.pop(0)
        seen += 1
        tensors = getattr(dataset, "_tensors", None)
        if tensors:
            shaped = [t for t in tensors if len(getattr(t, "shape", ())) >= 2]
            if shaped:
                biggest = max(shaped, key=lambda t: int(np.prod(t.shape[1:])))
                try:
                    found.append(biggest.numpy())
                except Exception:
                    pass
            continue
        try:
            todo.extend(dataset._inputs())
        except Exception:
            continue
    return found


def _tap_adapter(adapter: Any, tap: RowTap) -> None:
    """Make a data adapter's ``tf.data`` pipeline hand each batch to ``tap`` on its way to the model."""
    original = adapter.get_tf_dataset

    def get_tf_dataset() -> Any:
        import tensorflow as tf

        dataset = original()

        def record(*tensors: Any) -> Any:
            import numpy as np

            try:
                tap.add(tensors[0].numpy(), tensors[1].numpy() if len(tensors) > 1 else None)
            except Exception:
                pass
            return np.int64(0)

        def passing(*element: Any) -> Any:
            x, y = _split_batch(element)
            if isinstance(x, tf.Tensor):
                inputs = [x] + ([y] if isinstance(y, tf.Tensor) else [])
                done = tf.py_function(record, inputs, Tout=tf.int64)
                with tf.control_dependencies([done]):
                    element = tf.nest.map_structure(tf.identity, element)
            return element if len(element) != 1 else element[0]

        try:
            return dataset.map(passing)
        except Exception:
            return dataset  # never cost the student's training its data

    adapter.get_tf_dataset = get_tf_dataset


def _split_batch(element: tuple[Any, ...]) -> tuple[Any, Any]:
    """The model input and the target of one batch as Keras unpacks it: ``(x, y, sample_weight)``, ``(x, y)`` or ``x``."""
    x = element[0] if element else None
    y = element[1] if len(element) > 1 else None
    return _primary(x), _primary(y)


def _primary(value: Any) -> Any:
    """One tensor of a structure: a dict's or a list's only entry, else the first with the most dimensions."""
    if isinstance(value, dict):
        items = [value[k] for k in sorted(value)]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return value
    if not items:
        return None
    return max(items, key=lambda t: len(getattr(t, "shape", ()) or ()))


def _trained_penalties(model: Any, trained: bool) -> dict[str, Any]:
    """Layer path -> the weight penalty on its kernel that the training loss included (serialised), or None.

    Keras adds a kernel penalty to the loss through the kernel *variable*'s ``regularizer``, fixed when
    the layer is built: setting ``layer.kernel_regularizer`` afterwards changes what is saved, not what
    is trained. ``trained`` is False for a loop that never added ``model.losses`` to its loss.
    """
    import keras

    out: dict[str, Any] = {}
    for layer in _walk_layers(model):
        try:
            kernel = getattr(layer, "kernel", None)
        except Exception:
            kernel = None
        if kernel is None:
            continue
        reg = getattr(kernel, "regularizer", None) if trained else None
        try:
            out[str(getattr(layer, "path", None) or layer.name)] = (
                keras.saving.serialize_keras_object(reg) if reg is not None else None
            )
        except Exception:
            out[str(layer.name)] = {"class_name": type(reg).__name__, "config": {}}
    return out


def _add_progress(
    call: Any, path: Path, fit_index: int, epochs: int | None, keras: Any, tap: RowTap | None = None
) -> None:
    """Add one callback to a fit call's bound arguments: after each epoch it writes ``progress.json``
    (fit number, epoch, epochs), which only the live progress line of ``pytest grader/`` reads, and
    after the first it stops ``tap`` (one epoch of a stream is what it trained on). The student's own
    callbacks come first and are untouched; an unusual ``callbacks`` value is left alone.
    """

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if tap is not None:
                tap.close()
            try:
                tmp = path.with_name(".progress.json.tmp")
                tmp.write_text(json.dumps({"fit": fit_index, "epoch": epoch + 1, "epochs": epochs}))
                os.replace(tmp, path)
            except OSError:
                pass  # display only

    own = call.arguments.get("callbacks")
    if own is None or isinstance(own, (list, tuple)):
        call.arguments["callbacks"] = [*(own or []), Progress()]


def _save_model(model: Any, stem: Path, job_dir: Path) -> tuple[str | None, str | None, str | None, str | None]:
    """Save the model as fitted: ``.keras`` always; a SavedModel (its traced inference graph) plus layer facts
    when Keras could not rebuild it without the student's code (a subclassed model, a custom layer,
    regularizer or other object, a ``Lambda`` layer), or when ``.keras`` could not be written."""
    import keras

    artifact = fmt = error = facts = None
    path = stem.with_suffix(".keras")
    try:
        model.save(path)
        artifact, fmt = str(path.relative_to(job_dir)), "keras"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    subclassed = type(model) not in (keras.Sequential, keras.Model) and type(model).__name__ != "Functional"
    if subclassed or artifact is None or _needs_student_code(path):
        try:
            sm = stem.with_name(stem.name + "_savedmodel")
            model.export(str(sm), format="tf_saved_model", verbose=False)
            artifact, fmt, error = str(sm.relative_to(job_dir)), "savedmodel", None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        try:
            facts_path = stem.with_name(stem.name + "_facts.json")
            facts_path.write_text(json.dumps(_layer_facts(model), default=_plain))
            facts = str(facts_path.relative_to(job_dir))
        except Exception as exc:
            error = (error or "") + f" facts: {type(exc).__name__}: {exc}"[:300]
    return artifact, fmt, error, facts


def _needs_student_code(path: Path) -> bool:
    """Whether a saved ``.keras`` model names anything outside Keras (a function or class of the student's)
    or a ``Lambda`` layer: Keras's safe mode, which the grader loads with, refuses to rebuild those."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json")).get("config", {})
    except Exception:
        return True
    todo = [config]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            module = item.get("module", "keras")
            if "class_name" in item and not (isinstance(module, str) and module.startswith("keras")):
                return True  # a function (module "builtins"), or a class of the notebook's (module None)
            if item.get("class_name") in ("Lambda", "function", "__lambda__"):
                return True
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


def _layer_facts(model: Any) -> list[dict[str, Any]]:
    import keras

    out = []
    for layer in _walk_layers(model):
        entry: dict[str, Any] = {"name": layer.name, "class_name": type(layer).__name__}
        for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            reg = getattr(layer, attr, None)
            entry[attr] = keras.saving.serialize_keras_object(reg) if reg is not None else None
        try:
            kernel = getattr(layer, "kernel", None)
        except Exception:
            kernel = None
        entry["kernel_variable"] = getattr(kernel, "path", None) if kernel is not None else None
        entry["path"] = str(getattr(layer, "path", None) or layer.name)
        with contextlib.suppress(Exception):
            entry["weights"] = {
                str(v.path): [int(d) for d in v.shape] for v in layer.trainable_weights if len(v.shape) >= 2
            }
        out.append(entry)
    return out


def _walk_layers(model: Any) -> list[Any]:
    seen: list[Any] = []

    def visit(layer: Any) -> None:
        for child in getattr(layer, "layers", []) or []:
            if any(child is s for s in seen):
                continue
            seen.append(child)
            visit(child)

    visit(model)
    return seen


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _plain(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except Exception:
        pass
    return str(obj)
