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
    two-pass computation. Converting each strided column to float64 and reducing it four times took
    about three times as long for 50,000 CIFAR-10 images, with a column-sized copy each time.
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
        delta = block_mean - mean
        total = count + size
        mean = mean + delta * (size / total)
        m2 = m2 + block.sum(axis=axis) + delta**2 * (count * size / total)
        count = total
    std = np.sqrt(np.maximum(m2, 0.0) / count)
    return [
        {"mean": float(mean[j]), "std": float(std[j]), "min": float(low[j]), "max": float(high[j])}
        for j in range(n_cols)
    ]


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


def _install_recorder(job_dir: Path) -> None:
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
    counters = {"fit": 0, "evaluate": 0, "model": 0, "in_fit": 0}

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

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = fit_signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
        except TypeError:
            return original_fit(self, *args, **kwargs)
        index = counters["fit"] = counters["fit"] + 1
        key = model_key(self)
        tag = f"fit{index:03d}"
        x_fp = fingerprint_array(params.get("x"), samples_dir / f"{tag}_x.npy", job_dir)
        y_fp = fingerprint_array(params.get("y"), samples_dir / f"{tag}_y.npy", job_dir)
        val = params.get("validation_data")
        val_x = val[0] if isinstance(val, (tuple, list)) and val else None
        val_fp = fingerprint_array(val_x, samples_dir / f"{tag}_valx.npy", job_dir)
        started = time.perf_counter()
        counters["in_fit"] += 1
        try:
            call = fit_signature.bind(self, *args, **kwargs)  # what the student passed, no defaults added
            _add_progress(call, progress_path, index, _int_or_none(params.get("epochs")), keras)
            history = original_fit(*call.args, **call.kwargs)
        finally:
            counters["in_fit"] -= 1
        seconds = time.perf_counter() - started
        hist = getattr(history, "history", {}) or {}
        artifact, fmt, error, facts = _save_model(self, models_dir / tag, job_dir)
        write(
            {
                "type": "fit",
                "index": index,
                "model_key": key,
                "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
                "cell": current_cell(),
                "epochs_requested": _int_or_none(params.get("epochs")),
                "epochs_run": max((len(v) for v in hist.values()), default=0),
                "batch_size": _int_or_none(params.get("batch_size")),
                "validation_split": float(params.get("validation_split") or 0.0),
                "train_seconds": seconds,
                "history": {k: [float(v) for v in vals] for k, vals in hist.items()},
                "x": x_fp,
                "y": y_fp,
                "validation_x": val_fp,
                "artifact": artifact,
                "artifact_format": fmt,
                "artifact_error": error,
                "facts_file": facts,
            }
        )
        return history

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_evaluate(self, *args, **kwargs)
        if counters["in_fit"]:
            return result  # fit's own validation passes are not the student's evaluate calls
        try:
            bound = evaluate_signature.bind(self, *args, **kwargs)
            params = dict(bound.arguments)
            index = counters["evaluate"] = counters["evaluate"] + 1
            tag = f"eval{index:03d}"
            values = result if isinstance(result, (list, tuple)) else [result]
            if isinstance(result, dict):
                values = list(result.values())
            write(
                {
                    "type": "evaluate",
                    "index": index,
                    "model_key": model_key(self),
                    "cell": current_cell(),
                    "x": fingerprint_array(params.get("x"), samples_dir / f"{tag}_x.npy", job_dir),
                    "y": fingerprint_array(params.get("y"), samples_dir / f"{tag}_y.npy", job_dir),
                    "returned": [float(np.asarray(v)) for v in values],
                    "metric_names": [str(n) for n in getattr(self, "metrics_names", [])],
                }
            )
        except Exception:
            pass  # recording is best effort; the student's call must behave as without the grader
        return result

    keras.Model.fit = fit  # type: ignore[method-assign]
    keras.Model.evaluate = evaluate  # type: ignore[method-assign]


def _add_progress(call: Any, path: Path, fit_index: int, epochs: int | None, keras: Any) -> None:
    """Add one callback to a fit call's bound arguments: after each epoch it writes ``progress.json``
    (fit number, epoch, epochs), which only the live progress line of ``pytest grader/`` reads. The
    student's own callbacks come first and are untouched; an unusual ``callbacks`` value is left alone.
    """

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
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
