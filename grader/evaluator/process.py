"""The evaluator process, started as ``python -m grader.evaluator EVAL_DIR``.

Runs in the evaluator process, a sandboxed child of the orchestrator (started by
``grader.evaluator.evaluate.Session``), never in the orchestrator itself. It answers requests, one JSON
file per model in ``EVAL_DIR/requests/`` (a custody copy of the model's artifact, the digest that copy had
when taken, and, when its training data was identified, the canonical test inputs and the student's
input scaling), each with ``EVAL_DIR/results/<same name>`` (a ``ModelFacts`` and the digest of the model
it loaded) and a ``pred_NNNN.npy``, until ``requests/END`` is there and every request is answered
(:func:`serve`). It never sees labels: the orchestrator scores the predictions.

For each request it copies the custody copy into its own folder (``protocol.copy_artifact``), refuses a
copy whose digest is not the one taken, loads its own copy and reports that copy's digest. Model files
are untrusted input: ``.keras`` files are loaded with Keras safe mode (no lambdas, no arbitrary code),
after a size check; an exported graph (a SavedModel) is loaded only once ``graphs.refusal`` finds no
operation that reads or writes files, calls Python or reaches another process in it; artifacts holding
symbolic links are refused. It imports, of the grader, only the shared ``protocol.py``, ``inspect.py``,
``graphs.py`` and ``grader.records``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from grader.evaluator import protocol
from grader.records import ModelFacts, to_jsonable, write_json_atomic

PREDICT_BATCH = 500


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
        given = entry.get("weights")
        weights: dict[str, Any] = given if isinstance(given, dict) else {}
        shapes = [s for s in weights.values() if isinstance(s, list)]
        facts.append(
            LayerFacts(
                name=str(entry.get("name", "")),
                class_name=cls,
                # A four-dimensional weight is a convolution kernel, whatever the layer's class is called.
                is_conv=is_conv_class(cls) or any(len(s) == 4 for s in shapes),
                has_kernel=entry.get("kernel_variable") is not None or bool(shapes),
                kernel_params=0,
                kernel_regularizer=regularizer_from_config(entry.get("kernel_regularizer")),
                bias_regularizer=regularizer_from_config(entry.get("bias_regularizer")),
                activity_regularizer=regularizer_from_config(entry.get("activity_regularizer")),
                path=str(entry.get("path", "")),
                weights=[str(k) for k in weights],
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
    if _size(path) > protocol.MAX_MODEL_BYTES:
        return _replace(empty, load_error=f"the saved model is larger than {protocol.MAX_MODEL_BYTES // 2**20} MiB")
    predictor: Any
    try:
        if entry.get("format") == "keras":
            model = _load_keras(path)
            layers = inspect.layer_facts(model)
            arrays = inspect.kernels(model)
            source = "keras"
            predictor = model
        else:
            from grader.evaluator import graphs

            refused = graphs.refusal(path)
            if refused:
                return _replace(empty, load_error=f"the saved model was refused: {refused}"[:600])
            import tensorflow as tf

            loaded = tf.saved_model.load(str(path))
            report = json.loads(Path(entry["facts_file"]).read_text()) if entry.get("facts_file") else []
            layers = _facts_from_kernel_report(report)
            arrays = _trained_weights(loaded)
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


def _trained_weights(loaded: Any) -> dict[str, np.ndarray]:
    """The weight arrays of a loaded SavedModel that sparsity is measured on: every trainable variable of two
    dimensions or more (a custom layer's weight may be named "w", not "kernel"), keyed by position and name
    (exported names repeat: "dense/kernel:0" in two sub-models)."""
    variables = getattr(loaded, "trainable_variables", None)
    if variables is None and getattr(loaded, "variables", None) is not None:
        variables = [v for v in loaded.variables if getattr(v, "trainable", False)]
    if variables is None:  # a plain tf.Module saved as it is: the trainable variables its serve function captures
        variables = []
        for function in getattr(getattr(loaded, "serve", None), "concrete_functions", None) or []:
            variables += [v for v in function.trainable_variables if not any(v is seen for seen in variables)]
    out = {}
    for i, v in enumerate(list(variables)):
        shape = getattr(v, "shape", None)
        if shape is not None and len(shape) >= 2 and hasattr(v, "numpy"):
            out[f"{i}:{v.name}"] = np.asarray(v.numpy())
    return out


def input_structure(predictor: Any, source: str) -> Any:
    """How to hand one array to a model built with a named or nested single input (``keras.Model(inputs={"pixels":
    inp}, ...)``): a function of the array giving the structure the model expects (``{"pixels": x}``), or None
    where the model's input is not one array in a structure.

    The structure is the Keras model's ``model.input`` or, for an exported graph's ``serve``, the one positional
    argument of its traced signature (``structured_input_signature``).
    """
    if source == "keras":
        import keras

        try:
            structure = predictor.input
        except Exception:  # a subclassed model that was never called has no input
            return None
        flatten, pack = keras.tree.flatten, keras.tree.pack_sequence_as
    else:
        import tensorflow as tf

        structure = None
        for function in getattr(predictor, "concrete_functions", None) or [predictor]:
            signature: Any = getattr(function, "structured_input_signature", None) or ((), {})
            args, kwargs = signature
            if len(args) == 1 and not kwargs:
                structure = args[0]
                break
        if structure is None:
            return None
        flatten, pack = tf.nest.flatten, tf.nest.pack_sequence_as
    leaves = flatten(structure)
    if len(leaves) != 1 or leaves[0] is structure:
        return None  # several inputs, or a bare one
    return lambda x: pack(structure, [x])


def _predict(predictor: Any, source: str, x: np.ndarray) -> Any:
    """A reloaded model's outputs for ``x``: Keras's ``predict``, or the exported graph's ``serve`` in batches.

    A model that refuses a bare array because it was built with one named input (a dict) is given ``{name: x}``
    instead (:func:`input_structure`).
    """
    try:
        return _run(predictor, source, x, lambda batch: batch)
    except Exception:
        wrap = input_structure(predictor, source)
        if wrap is None:
            raise
    return _run(predictor, source, x, wrap)


def _run(predictor: Any, source: str, x: np.ndarray, wrap: Any) -> Any:
    if source == "keras":
        return predictor.predict(wrap(x), batch_size=PREDICT_BATCH, verbose=0)
    return np.concatenate(
        [np.asarray(predictor(wrap(x[i : i + PREDICT_BATCH]))) for i in range(0, len(x), PREDICT_BATCH)]
    )


def _replace(facts: ModelFacts, **changes: Any) -> ModelFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def _private_copy(entry: dict[str, Any], work: Path) -> tuple[dict[str, Any], str]:
    """Copy a request's artifact (and kernel facts file) into ``work``; the entry now names the copies, and the
    digest is theirs (``protocol.request_digest`` of the new entry).

    Raises ``ValueError`` for a request the orchestrator refused (its ``refused`` reason), for files
    ``protocol.copy_artifact`` refuses, and for copies whose digest is not the one the request names (``digest``: the
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
        protocol.copy_artifact(src, dst)
        entry[key] = str(dst)
    digest = protocol.request_digest(entry)
    if not digest:
        raise ValueError("the saved model could not be read")
    if entry.get("digest") and digest != entry["digest"]:
        raise ValueError("the grader's copy of the saved model changed after it was taken")
    return entry, digest


def _answer(eval_dir: Path, name: str) -> None:
    rid = int(name.removesuffix(".json"))
    entry = json.loads((eval_dir / protocol.REQUESTS / name).read_text())
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
    write_json_atomic(eval_dir / protocol.RESULTS / name, {"facts": to_jsonable(facts), "digest": digest})


def serve(eval_dir: Path) -> None:
    """Answer requests as they come, until ``requests/END`` is there and every request is answered.

    Keras (and TensorFlow) is imported, and seeded, when the first request comes: a notebook that trains
    no model never pays for it, in time or memory.
    """
    session = json.loads((eval_dir / protocol.SESSION).read_text())
    requests = eval_dir / protocol.REQUESTS
    answered: set[str] = set()
    while True:
        ending = (requests / protocol.END).exists()
        # Listed after END was seen: the orchestrator writes END after its last request.
        todo = sorted(p.name for p in requests.glob("[0-9]*.json") if p.name not in answered)
        if not todo:
            if ending:
                return
            time.sleep(protocol.POLL_SECONDS)
            continue
        import keras

        if not answered:
            keras.utils.set_random_seed(int(session.get("seed", 0)))
        for name in todo:
            _answer(eval_dir, name)
            answered.add(name)
            keras.backend.clear_session()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m grader.evaluator EVAL_DIR", file=sys.stderr)
        return 2
    serve(Path(argv[0]).resolve())
    return 0

