"""The evaluator: reloads each captured model in a process of its own and predicts on canonical inputs.

Run as ``python -m grader.evaluate EVAL_DIR``. ``EVAL_DIR/eval_job.json`` lists the models (their
artifact paths) and, for each, the canonical test inputs and the input scaling the orchestrator
detected. The evaluator writes ``evaluation.json`` (one ``ModelFacts`` per model) and
``pred_NNN.npy`` files. It never sees labels: the orchestrator scores the predictions.

Model files are untrusted input: ``.keras`` files are loaded with Keras safe mode (no lambdas, no
arbitrary code), after a size check.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from grader.records import ModelFacts, to_jsonable, write_json_atomic

MAX_MODEL_BYTES = 512 * 1024 * 1024
PREDICT_BATCH = 500


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _prepare_inputs(spec: dict[str, Any]) -> np.ndarray:
    """Canonical inputs, scaled the way the student scaled theirs: ``student = scale * canonical + shift`` per channel."""
    x = np.load(spec["x_file"], allow_pickle=False)
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
    from grader.inspect import is_conv_class, regularizer_from_config
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


def evaluate_model(entry: dict[str, Any], out_dir: Path) -> ModelFacts:
    """Load one model, read its facts, and predict on its canonical inputs."""
    from grader import inspect

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
        if source == "keras":
            preds = predictor.predict(x, batch_size=PREDICT_BATCH, verbose=0)
        else:
            preds = np.concatenate([np.asarray(predictor(x[i : i + PREDICT_BATCH])) for i in range(0, len(x), PREDICT_BATCH)])
        if isinstance(preds, (list, tuple)):
            raise ValueError(f"the model has {len(preds)} outputs; one was expected")
        preds = np.asarray(preds, dtype=np.float32)
        if preds.shape[0] != x.shape[0]:
            raise ValueError(f"the model returned {preds.shape[0]} predictions for {x.shape[0]} inputs")
        out = out_dir / f"pred_{index:03d}.npy"
        np.save(out, preds, allow_pickle=False)
        return _replace(facts, predictions_file=out.name)
    except Exception as exc:
        return _replace(facts, prediction_error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:600])


def _replace(facts: ModelFacts, **changes: Any) -> ModelFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m grader.evaluate EVAL_DIR", file=sys.stderr)
        return 2
    eval_dir = Path(argv[0]).resolve()
    job = json.loads((eval_dir / "eval_job.json").read_text())
    started = time.monotonic()
    import keras

    keras.utils.set_random_seed(int(job.get("seed", 0)))
    results = [to_jsonable(evaluate_model(entry, eval_dir)) for entry in job["models"]]
    write_json_atomic(eval_dir / "evaluation.json", {"models": results, "seconds": time.monotonic() - started})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
