"""The evaluator: reloads each captured model in a process of its own and predicts on canonical inputs.

Two halves live here. :class:`Session` is the orchestrator's side: it starts ``python -m
grader.evaluator.evaluate EVAL_DIR`` (sandboxed, like the runner) as soon as a notebook starts executing, so
that the evaluator's TensorFlow import and its work on the models trained early overlap the
student's later cells. The ``__main__`` half is that process: it takes requests, one JSON file per
model in ``EVAL_DIR/requests/`` (the model's artifact path and, when its training data was
identified, the canonical test inputs and the student's input scaling), and answers each with
``EVAL_DIR/results/<same name>`` (a ``ModelFacts`` and the digest of the model it loaded) and a
``pred_NNNN.npy``, until the orchestrator writes ``requests/END``. It never sees labels: the
orchestrator scores the predictions.

A request names the orchestrator's custody copy of a saved model (``grader/evaluator/custody.py``: taken out of
the kernel's reach as soon as its fit is recorded) and the digest that copy had when taken. The
evaluator copies it into its own folder, refuses a copy whose digest is another, and loads its own
copy; the digest it reports is of that copy. Once the kernel is gone, the orchestrator keeps an early
answer only when its request is the final one for that model and the digest is the one taken;
anything else is evaluated again. A grade is therefore computed from the models as they were taken.

Model files are untrusted input: ``.keras`` files are loaded with Keras safe mode (no lambdas, no
arbitrary code), after a size check; artifacts holding symbolic links are refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grader.records import ModelFacts, from_jsonable, to_jsonable, write_json_atomic

if TYPE_CHECKING:
    from grader.runner.sandbox import IsolatedRun, Outcome

MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_MODEL_FILES = 10_000  # entries (files and folders) in one saved model
MAX_MODEL_DEPTH = 32  # folders nested in one saved model
PREDICT_BATCH = 500
POLL_SECONDS = 0.1
END = "END"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _prepare_inputs(spec: dict[str, Any], key: str = "x_file") -> np.ndarray:
    """Canonical inputs, scaled the way the student scaled theirs: ``student = scale * canonical + shift`` per channel."""
    x = np.load(spec[key], allow_pickle=False)
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
    channels = int(spec["channels"])
    scale = np.asarray(spec["scale"], dtype=np.float64)
    shift = np.asarray(spec["shift"], dtype=np.float64)
    idx = np.arange(flat.shape[1]) % channels
    flat = flat * scale[idx] + shift[idx]
    return flat.reshape([n, *spec["sample_shape"]]).astype(np.float32)


def _load_keras(path: Path) -> Any:
    import keras

    if not zipfile.is_zipfile(path):
        raise ValueError("the saved model is not a .keras archive")
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def _facts_from_kernel_report(report: list[dict[str, Any]]) -> list[Any]:
    from grader.evaluator.inspect import is_conv_class, regularizer_from_config
    from grader.records import LayerFacts

    facts = []
    for entry in report:
        cls = str(entry.get("class_name", ""))
        facts.append(
            LayerFacts(
                name=str(entry.get("name", "")),
                class_name=cls,
                is_conv=is_conv_class(cls),
                has_kernel=entry.get("kernel_variable") is not None,
                kernel_params=0,
                kernel_regularizer=regularizer_from_config(entry.get("kernel_regularizer")),
                bias_regularizer=regularizer_from_config(entry.get("bias_regularizer")),
                activity_regularizer=regularizer_from_config(entry.get("activity_regularizer")),
            )
        )
    return facts


def evaluate_model(entry: dict[str, Any], out_dir: Path, pred_name: str | None = None) -> ModelFacts:
    """Load one model, read its facts, and predict on its canonical inputs (saved as ``out_dir/pred_name``)."""
    from grader.evaluator import inspect

    index = int(entry["fit_index"])
    path = Path(entry["artifact"]) if entry.get("artifact") else None
    empty = ModelFacts(index, False, "", "", [], 0, {}, {}, None, "")
    if path is None or not path.exists():
        return _replace(empty, load_error="no saved model was found for this fit")
    if _size(path) > MAX_MODEL_BYTES:
        return _replace(empty, load_error=f"the saved model is larger than {MAX_MODEL_BYTES // 2**20} MiB")
    predictor: Any
    try:
        if entry.get("format") == "keras":
            model = _load_keras(path)
            layers = inspect.layer_facts(model)
            arrays = inspect.kernels(model)
            source = "keras"
            predictor = model
        else:
            import tensorflow as tf

            loaded = tf.saved_model.load(str(path))
            report = json.loads(Path(entry["facts_file"]).read_text()) if entry.get("facts_file") else []
            layers = _facts_from_kernel_report(report)
            # Exported variable names repeat ("model/kernel:0" for every layer): key them by position.
            arrays = {
                f"{i}:{v.name}": v.numpy()
                for i, v in enumerate(loaded.variables)
                if "kernel" in v.name and len(v.shape) >= 2
            }
            source = "savedmodel+kernel-facts"
            predictor = loaded.serve
    except Exception as exc:
        return _replace(empty, load_error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:600])
    kernel_list = list(arrays.values())
    facts = ModelFacts(
        fit_index=index,
        loaded=True,
        load_error="",
        source=source,
        layers=layers,
        kernel_params=int(sum(a.size for a in kernel_list)),
        near_zero=inspect.near_zero_fractions(kernel_list),
        abs_weight_histogram=inspect.abs_histogram(kernel_list),
        predictions_file=None,
        prediction_error="",
    )
    extra: dict[str, Any] = {}
    for kind in ("l1", "l2"):
        chosen = inspect.penalised_kernels(layers, arrays, kind) if source == "keras" else []
        if chosen:
            extra[f"penalised_{kind}"] = inspect.near_zero_fractions(chosen)
    if extra:
        facts = _replace(facts, near_zero={**facts.near_zero, **{f"{k}:{t}": v for k, d in extra.items() for t, v in d.items()}})
    spec = entry.get("input")
    if not spec:
        return facts
    try:
        x = _prepare_inputs(spec)
        preds = _predict(predictor, source, x)
        if isinstance(preds, (list, tuple)):
            raise ValueError(f"the model has {len(preds)} outputs; one was expected")
        preds = np.asarray(preds, dtype=np.float32)
        if preds.shape[0] != x.shape[0]:
            raise ValueError(f"the model returned {preds.shape[0]} predictions for {x.shape[0]} inputs")
        out = out_dir / (pred_name or f"pred_{index:03d}.npy")
        np.save(out, preds, allow_pickle=False)
        facts = _replace(facts, predictions_file=out.name)
    except Exception as exc:
        return _replace(facts, prediction_error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:600])
    if not spec.get("train_x_file"):
        return facts
    try:
        # The same model on canonical *training* rows, prepared the same way: a model that does better on
        # the test rows than on rows it was trained on was trained on the test set, whatever was recorded.
        preds = _predict(predictor, source, _prepare_inputs(spec, "train_x_file"))
        out = out_dir / (pred_name or f"pred_{index:03d}.npy").replace(".npy", "_train.npy")
        np.save(out, np.asarray(preds, dtype=np.float32), allow_pickle=False)
        return _replace(facts, train_predictions_file=out.name)
    except Exception:
        return facts  # the test predictions stand; only the comparison with training rows is missing


def _predict(predictor: Any, source: str, x: np.ndarray) -> Any:
    """A reloaded model's outputs for ``x``: Keras's ``predict``, or the exported graph's ``serve`` in batches."""
    if source == "keras":
        return predictor.predict(x, batch_size=PREDICT_BATCH, verbose=0)
    return np.concatenate([np.asarray(predictor(x[i : i + PREDICT_BATCH])) for i in range(0, len(x), PREDICT_BATCH)])


def _replace(facts: ModelFacts, **changes: Any) -> ModelFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def artifact_digest(path: Path) -> str:
    """sha256 of a saved model: a file's bytes, or a folder's relative paths and file bytes in order.

    "" when it cannot be read, is too large, or holds anything but folders and regular files (such an
    artifact is never reused).
    """
    digest = hashlib.sha256()
    try:
        if path.is_symlink():
            return ""
        if path.is_file():
            return _file_digest(path) if path.stat().st_size <= MAX_MODEL_BYTES else ""
        if not path.is_dir():
            return ""
        for item in sorted(path.rglob("*")):
            if item.is_symlink() or not (item.is_file() or item.is_dir()):
                return ""
            if item.is_file():
                digest.update(str(item.relative_to(path)).encode() + b"\0")
                digest.update(_file_digest(item).encode())
    except OSError:
        return ""
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_bounded(src: str, dst: str, limit: int = MAX_MODEL_BYTES, dir_fd: int | None = None) -> int:
    """Copy one regular file (``src`` relative to the open folder ``dir_fd`` when given), not following links nor
    blocking on a FIFO, refusing more than ``limit`` bytes; returns the bytes copied."""
    import os
    import stat

    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("the saved model holds something other than regular files")
        copied = 0
        with open(dst, "xb") as out:
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > limit:
                    raise ValueError(f"the saved model is larger than {MAX_MODEL_BYTES // 2**20} MiB")
                out.write(chunk)
    finally:
        os.close(fd)
    return copied


def copy_artifact(src: str | Path, dst: Path, dir_fd: int | None = None) -> int:
    """Copy a saved model (one regular file, or a folder of folders and regular files) to ``dst``, which must not
    exist; returns the bytes copied. ``src`` is relative to the open folder ``dir_fd`` when given.

    No symbolic link is followed, at ``src`` or anywhere inside it; a FIFO or other special file is refused
    without blocking on it; so is more than ``MAX_MODEL_BYTES`` in all, more than ``MAX_MODEL_FILES`` entries,
    or folders nested deeper than ``MAX_MODEL_DEPTH``. A refusal is a ``ValueError`` whose message is the
    model's load error; what was copied before it stays in ``dst`` for the caller to remove.
    """
    budget = {"bytes": MAX_MODEL_BYTES, "entries": MAX_MODEL_FILES}
    _copy_entry(str(src), dir_fd, dst, budget, 0)
    return MAX_MODEL_BYTES - budget["bytes"]


def _copy_entry(name: str, dir_fd: int | None, dst: Path, budget: dict[str, int], depth: int) -> None:
    import os
    import stat

    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        raise ValueError("the saved model is a symbolic link" if depth == 0 else "the saved model holds a symbolic link")
    budget["entries"] -= 1
    if budget["entries"] < 0:
        raise ValueError(f"the saved model holds more than {MAX_MODEL_FILES} files")
    if not stat.S_ISDIR(mode):
        budget["bytes"] -= _copy_bounded(name, str(dst), budget["bytes"], dir_fd)
        return
    if depth >= MAX_MODEL_DEPTH:
        raise ValueError(f"the saved model holds folders nested more than {MAX_MODEL_DEPTH} deep")
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        dst.mkdir()
        for child in sorted(os.listdir(fd)):
            _copy_entry(child, fd, dst / child, budget, depth + 1)
    finally:
        os.close(fd)


def _private_copy(entry: dict[str, Any], work: Path) -> tuple[dict[str, Any], str]:
    """Copy a request's artifact (and kernel facts file) into ``work``; the entry now names the copies, and the
    digest is theirs (``request_digest`` of the new entry).

    Raises ``ValueError`` for a request the orchestrator refused (its ``refused`` reason), for files
    ``copy_artifact`` refuses, and for copies whose digest is not the one the request names (``digest``: the
    orchestrator's custody copy as it was when taken, see ``grader/evaluator/custody.py``).
    """
    if entry.get("refused"):
        raise ValueError(str(entry["refused"]))
    entry = dict(entry)
    for key in ("artifact", "facts_file"):
        src = Path(entry[key]) if entry.get(key) else None
        if src is None or not (src.exists() or src.is_symlink()):
            continue
        dst = work / f"{key}{''.join(src.suffixes)}"
        copy_artifact(src, dst)
        entry[key] = str(dst)
    digest = request_digest(entry)
    if not digest:
        raise ValueError("the saved model could not be read")
    if entry.get("digest") and digest != entry["digest"]:
        raise ValueError("the grader's copy of the saved model changed after it was taken")
    return entry, digest


def request_digest(entry: dict[str, Any]) -> str:
    """A request's files as they are now: their digests in order ("-" for one absent); "" if one cannot be read."""
    digest = hashlib.sha256()
    for key in ("artifact", "facts_file"):
        path = Path(entry[key]) if entry.get(key) else None
        if path is None or not (path.exists() or path.is_symlink()):
            digest.update(b"-")
            continue
        one = artifact_digest(path)
        if not one:
            return ""
        digest.update(one.encode())
    return digest.hexdigest()


def _answer(eval_dir: Path, name: str) -> None:
    rid = int(name.removesuffix(".json"))
    entry = json.loads((eval_dir / "requests" / name).read_text())
    work = eval_dir / "work" / f"{rid:04d}"
    work.mkdir(parents=True, exist_ok=True)
    index = int(entry["fit_index"])
    try:
        try:
            copied, digest = _private_copy(entry, work)
        except (OSError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            facts = ModelFacts(index, False, why[:600], "", [], 0, {}, {}, None, "")
            digest = ""
        else:
            facts = evaluate_model(copied, eval_dir, f"pred_{rid:04d}.npy")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(eval_dir / "results" / name, {"facts": to_jsonable(facts), "digest": digest})


def serve(eval_dir: Path) -> None:
    """Answer requests as they come, until ``requests/END`` is there and every request is answered."""
    import keras

    session = json.loads((eval_dir / "session.json").read_text())
    keras.utils.set_random_seed(int(session.get("seed", 0)))
    requests = eval_dir / "requests"
    answered: set[str] = set()
    while True:
        ending = (requests / END).exists()
        # Listed after END was seen: the orchestrator writes END after its last request.
        todo = sorted(p.name for p in requests.glob("[0-9]*.json") if p.name not in answered)
        if not todo:
            if ending:
                return
            time.sleep(POLL_SECONDS)
            continue
        for name in todo:
            _answer(eval_dir, name)
            answered.add(name)
            keras.backend.clear_session()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m grader.evaluator.evaluate EVAL_DIR", file=sys.stderr)
        return 2
    serve(Path(argv[0]).resolve())
    return 0


# ----------------------------------------------------------------------------------------------
# The orchestrator's side
# ----------------------------------------------------------------------------------------------


class Session:
    """One submission's evaluator process, started with its notebook and closed once every model is answered.

    One started with its notebook gets ``background=True`` (``sandbox.background_policy``): while the
    notebook runs it should fill cores the kernel leaves idle, not slow the kernel down;
    ``foreground()`` lifts that. One started after the notebook runs at normal priority.
    """

    def __init__(
        self,
        eval_dir: Path,
        *,
        seed: int,
        readable: tuple[Path, ...],
        hidden: tuple[Path, ...],
        memory_bytes: int,
        timeout: float,
        background: bool = False,
    ) -> None:
        from grader.runner import sandbox

        # Emptied, not removed: a runner's sandbox may hide this very folder (a mount on it). What the
        # kernel may have put in its place (a link, a file) is removed, never followed.
        if eval_dir.is_symlink() or (eval_dir.exists() and not eval_dir.is_dir()):
            eval_dir.unlink()
        eval_dir.mkdir(parents=True, exist_ok=True)
        for entry in eval_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (eval_dir / "requests").mkdir()
        (eval_dir / "results").mkdir()
        write_json_atomic(eval_dir / "session.json", {"seed": seed})
        self.eval_dir = eval_dir
        self.sent: dict[int, dict[str, Any]] = {}
        self.run: IsolatedRun = sandbox.IsolatedRun(
            [sys.executable, "-m", "grader.evaluator.evaluate", str(eval_dir)],
            sandbox.Isolation(eval_dir, readable=readable, hidden=hidden, uid=sandbox.EVALUATOR_UID),
            timeout=timeout,
            log_path=eval_dir / "evaluator.log",
            memory_bytes=memory_bytes,
            background=background,
        )
        self.outcome: Outcome | None = None

    def submit(self, entry: dict[str, Any]) -> int:
        """Ask for one model to be evaluated; returns the request's number."""
        rid = len(self.sent) + 1
        self.sent[rid] = entry
        write_json_atomic(self.eval_dir / "requests" / f"{rid:04d}.json", entry)
        return rid

    def answered(self, rid: int) -> bool:
        return (self.eval_dir / "results" / f"{rid:04d}.json").exists()

    def busy(self) -> bool:
        return any(not self.answered(rid) for rid in self.sent)

    def wait_answer(self, rid: int, deadline: float) -> tuple[ModelFacts, str] | None:
        """Wait (until ``deadline``, a ``time.monotonic()`` value) for a request's answer while the evaluator lives."""
        while not self.answered(rid):
            if time.monotonic() >= deadline or self.run.wait(POLL_SECONDS):
                break
        return self.answer(rid)

    def answer(self, rid: int) -> tuple[ModelFacts, str] | None:
        """A request's facts (``predictions_file`` relative to the job dir) and the digest of the model it loaded."""
        try:
            data = json.loads((self.eval_dir / "results" / f"{rid:04d}.json").read_text())
            facts = from_jsonable(ModelFacts, data["facts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if facts.predictions_file is not None:
            name = Path(facts.predictions_file).name
            facts = _replace(facts, predictions_file=f"{self.eval_dir.name}/{name}")
        if facts.train_predictions_file is not None:
            name = Path(facts.train_predictions_file).name
            facts = _replace(facts, train_predictions_file=f"{self.eval_dir.name}/{name}")
        return facts, str(data.get("digest", ""))

    def foreground(self) -> None:
        """The notebook is done: the evaluator's remaining work is no longer background work."""
        self.run.to_foreground()

    def close(self, timeout: float) -> Outcome:
        """No more requests: wait up to ``timeout`` seconds for the evaluator to answer them all and exit."""
        if self.outcome is None:
            (self.eval_dir / "requests" / END).touch()
            self.outcome = self.run.finish(timeout=timeout)
        return self.outcome

    def kill(self) -> None:
        if self.outcome is None:
            self.outcome = self.run.finish(timeout=0.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
