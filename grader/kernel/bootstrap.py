"""Code the runner executes inside the student's kernel before any student cell.

It pins seeds, serves the datasets offline, refuses other network access, and records every
``Model.fit`` / ``Model.evaluate`` call with the model saved at fit time. It only *produces
artifacts*: nothing here decides a grade. Importing this module has no side effects; the runner
executes its source in the kernel and then calls :func:`install`.

The fingerprint helpers (``sample_positions``, ``fingerprint_array``) are shared with the grader, which
fingerprints the canonical data the same way to recognise what a model was fit on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
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
    counters = {"fit": 0, "evaluate": 0, "model": 0, "in_fit": 0, "in_keras": 0}
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
        penalties_trained: bool = True, sources: list[dict[str, Any]] | None = None,
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
        index, tag = next_tag()
        x = params.get("x")
        tap = RowTap(_stream_origin(x)) if is_stream(x) else None
        if tap is None:
            x_fp = fingerprint_array(x, samples_dir / f"{tag}_x.npy", job_dir)
            y_fp = fingerprint_array(params.get("y"), samples_dir / f"{tag}_y.npy", job_dir)
        val = params.get("validation_data")
        val_x = val[0] if isinstance(val, (tuple, list)) and val else None
        val_fp = fingerprint_array(val_x, samples_dir / f"{tag}_valx.npy", job_dir)
        started = time.perf_counter()
        counters["in_fit"] += 1
        counters["in_keras"] += 1
        taps["next"] = tap
        try:
            call = fit_signature.bind(self, *args, **kwargs)  # what the student passed, no defaults added
            _add_progress(call, progress_path, index, _int_or_none(params.get("epochs")), keras, tap)
            history = original_fit(*call.args, **call.kwargs)
        finally:
            taps["next"] = None
            counters["in_fit"] -= 1
            counters["in_keras"] -= 1
        seconds = time.perf_counter() - started
        sources: list[dict[str, Any]] = []
        if tap is not None:
            x_fp, y_fp = tap.fingerprints(samples_dir / tag, job_dir)
            for i, source in enumerate(_stream_sources(x)):
                sources.append(fingerprint_array(source, samples_dir / f"{tag}_src{i}.npy", job_dir))
        record_training(
            self, index, tag, origin=tap.origin if tap else "array", x_fp=x_fp, y_fp=y_fp, val_fp=val_fp,
            seconds=seconds, hist=getattr(history, "history", {}) or {},
            epochs_requested=_int_or_none(params.get("epochs")), batch_size=_int_or_none(params.get("batch_size")),
            validation_split=float(params.get("validation_split") or 0.0), steps=0, cell=current_cell(),
            sources=sources,
        )
        return history

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
                x_fp = fingerprint_array(params.get("x"), samples_dir / f"{tag}_x.npy", job_dir)
                y_fp = fingerprint_array(params.get("y"), samples_dir / f"{tag}_y.npy", job_dir)
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

        def flush(self) -> None:
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
        if not counters["in_keras"]:
            try:
                x = args[0] if args else kwargs.get("inputs")
                loops.of(self, "custom_loop")  # known now: a step traced next must find the model
                _observe(x, functools.partial(_call_seen, weakref.ref(self)))
            except Exception:
                pass
        return original_call(self, *args, **kwargs)

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

    replaced: list[tuple[Any, str, Any]] = [
        (keras.Model, name, keras.Model.__dict__.get(name))
        for name in ("fit", "evaluate", "train_on_batch", "__call__", "losses", "predict", "test_on_batch", "predict_on_batch")
    ] + [(keras.optimizers.Optimizer, "apply", keras.optimizers.Optimizer.__dict__.get("apply")),
         (data_adapters, "get_data_adapter", original_adapter)]
    keras.Model.fit = fit  # type: ignore[method-assign]
    keras.Model.evaluate = evaluate  # type: ignore[method-assign]
    keras.Model.train_on_batch = train_on_batch  # type: ignore[method-assign]
    keras.Model.__call__ = model_call  # type: ignore[method-assign]
    keras.Model.losses = property(losses)  # type: ignore[method-assign,assignment]
    keras.optimizers.Optimizer.apply = apply  # type: ignore[method-assign]
    for name in ("predict", "test_on_batch", "predict_on_batch"):
        setattr(keras.Model, name, inside_keras(getattr(keras.Model, name)))
    data_adapters.get_data_adapter = get_data_adapter

    def flush_after_cell(*_args: Any) -> None:
        loops.flush()

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
    """Save the model as fitted: ``.keras`` always; a SavedModel plus layer facts when the class is the student's."""
    import keras

    artifact = fmt = error = facts = None
    try:
        path = stem.with_suffix(".keras")
        model.save(path)
        artifact, fmt = str(path.relative_to(job_dir)), "keras"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    if type(model) not in (keras.Sequential, keras.Model) and type(model).__name__ != "Functional":
        # A subclassed model cannot be rebuilt without the student's class: export the traced graph.
        try:
            sm = stem.with_name(stem.name + "_savedmodel")
            model.export(str(sm), format="tf_saved_model", verbose=False)
            artifact, fmt = str(sm.relative_to(job_dir)), "savedmodel"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        try:
            facts_path = stem.with_name(stem.name + "_facts.json")
            facts_path.write_text(json.dumps(_layer_facts(model), default=_plain))
            facts = str(facts_path.relative_to(job_dir))
        except Exception as exc:
            error = (error or "") + f" facts: {type(exc).__name__}: {exc}"[:300]
    return artifact, fmt, error, facts


def _layer_facts(model: Any) -> list[dict[str, Any]]:
    import keras

    out = []
    for layer in _walk_layers(model):
        entry: dict[str, Any] = {"name": layer.name, "class_name": type(layer).__name__}
        for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            reg = getattr(layer, attr, None)
            entry[attr] = keras.saving.serialize_keras_object(reg) if reg is not None else None
        kernel = getattr(layer, "kernel", None)
        entry["kernel_variable"] = getattr(kernel, "path", None) if kernel is not None else None
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
