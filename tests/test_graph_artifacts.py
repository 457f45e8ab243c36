"""Exported graphs (SavedModels) as the evaluator takes them: refused for what they could do, read for what they are.

Drives ``grader/evaluator/graphs.py`` (``refusal``: the operations of ``saved_model.pb``, read without running
anything) and ``evaluate_model`` of ``grader/evaluator/process.py`` in this process, on tiny models: a Keras model
Keras cannot rebuild (a custom layer, a plain-function regularizer) exported with ``model.export`` is loaded, its
weights and predictions read; hand-built graphs that write or read files, call Python, restore a checkpoint where
they are served or print to a file are refused before anything of theirs runs; so are a garbage, truncated or
TensorFlow 1 ``saved_model.pb``. Models built with one named input (a dict) are predicted on both ways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from grader.evaluator import graphs  # noqa: E402
from grader.evaluator.process import evaluate_model, input_structure  # noqa: E402


def entry_for(artifact: Path, tmp_path: Path, *, fmt: str = "savedmodel", facts: list[dict[str, Any]] | None = None,
              rows: int = 7) -> dict[str, Any]:
    """An evaluator request as ``_private_copy`` hands it to ``evaluate_model``: the artifact, its kernel facts
    file, and canonical inputs of 4 features (unscaled)."""
    x = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x, allow_pickle=False)
    facts_file = None
    if facts is not None:
        facts_file = tmp_path / "facts.json"
        facts_file.write_text(json.dumps(facts))
    return {
        "fit_index": 1,
        "artifact": str(artifact),
        "format": fmt,
        "facts_file": str(facts_file) if facts_file else None,
        "input": {"x_file": str(tmp_path / "x.npy"), "channels": 1, "scale": [1.0], "shift": [0.0], "sample_shape": [4]},
    }


def predictions(facts: Any, out_dir: Path) -> np.ndarray:
    assert facts.predictions_file, facts.prediction_error
    return np.load(out_dir / facts.predictions_file, allow_pickle=False)


# ------------------------------------------------------------------------------------------------
# A model only its graph can rebuild: accepted, weights and predictions read
# ------------------------------------------------------------------------------------------------


class Scale(keras.layers.Layer):  # type: ignore[misc,name-defined]
    """A custom layer whose weight is named "w" (not "kernel"), with a kernel penalty of its own."""

    def __init__(self, units: int, penalty: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.penalty = penalty

    def build(self, input_shape: Any) -> None:
        self.w = self.add_weight(name="w", shape=(int(input_shape[-1]), self.units), initializer="ones",
                                 regularizer=self.penalty)

    def call(self, inputs: Any) -> Any:
        return inputs @ self.w


def l1_by_hand(weights: Any) -> Any:
    return 1e-3 * keras.ops.sum(keras.ops.abs(weights))


def test_a_custom_layer_with_a_function_regularizer_is_exported_loaded_predicted_and_its_weights_read(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    hidden = Scale(3, penalty=l1_by_hand, name="scale")(inputs)
    outputs = keras.layers.Dense(2, kernel_regularizer=l1_by_hand, kernel_initializer="zeros", name="head")(hidden)
    model = keras.Model(inputs, outputs)
    exported = tmp_path / "fit001_savedmodel"
    model.export(str(exported), format="tf_saved_model", verbose=False)
    entry = entry_for(exported, tmp_path, facts=[
        {"name": "scale", "class_name": "Scale", "kernel_regularizer": None, "kernel_variable": None},
        {"name": "head", "class_name": "Dense", "kernel_regularizer": {"class_name": "function", "config": "l1_by_hand"},
         "kernel_variable": "head/kernel"},
    ])

    assert graphs.refusal(exported) == ""  # the exporter's checkpoint functions are never run: not refused
    facts = evaluate_model(entry, tmp_path)

    assert facts.loaded and facts.source == "savedmodel+kernel-facts", facts.load_error
    assert facts.kernel_params == 4 * 3 + 3 * 2  # "scale/w" counts though no "kernel" is in its name
    assert facts.near_zero["0.01"] == pytest.approx(6 / 18)  # the head's zeros, not the custom layer's ones
    assert [layer.class_name for layer in facts.layers] == ["Scale", "Dense"]  # the kernel's claim, as labelled
    x = np.load(tmp_path / "x.npy")
    assert np.allclose(predictions(facts, tmp_path), model.predict(x, verbose=0), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Graphs that could reach outside themselves: refused, nothing run
# ------------------------------------------------------------------------------------------------


def save_module(tmp_path: Path, body: Any, name: str = "crafted") -> Path:
    """A ``tf.Module`` whose ``serve(x)`` runs ``body(x)``, saved with ``tf.saved_model.save`` (tracing it runs
    nothing of ``body``'s side effects)."""

    class Crafted(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.v = tf.Variable(tf.ones((4, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x: Any) -> Any:
            return body(x) + x @ self.v

    path = tmp_path / name
    tf.saved_model.save(Crafted(), str(path))
    return path


def write_marker(marker: Path) -> Any:
    def body(x: Any) -> Any:
        with tf.control_dependencies([tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))]):
            return tf.zeros((tf.shape(x)[0], 2))

    return body


def read_file(target: Path) -> Any:
    def body(x: Any) -> Any:
        return tf.zeros((tf.shape(x)[0], 2)) + tf.cast(tf.strings.length(tf.io.read_file(str(target))), tf.float32)

    return body


def py_function(marker: Path) -> Any:
    def touch(x: Any) -> Any:
        marker.write_text("ran")
        return np.zeros((len(x), 2), np.float32)

    def body(x: Any) -> Any:
        return tf.reshape(tf.py_function(touch, [x], tf.float32), (-1, 2))

    return body


@pytest.mark.parametrize(
    ("make", "op"),
    [
        pytest.param(write_marker, "WriteFile", id="write_file"),
        pytest.param(read_file, "ReadFile", id="read_file"),
        pytest.param(py_function, "EagerPyFunc", id="py_function"),
    ],
)
def test_a_graph_that_reads_or_writes_files_or_calls_python_is_refused_and_runs_nothing(
    tmp_path: Path, make: Any, op: str
) -> None:
    marker = tmp_path / "GRAPH_RAN"
    saved = save_module(tmp_path, make(marker))
    assert not marker.exists()  # saving traced the graph without running it

    reason = graphs.refusal(saved)
    facts = evaluate_model(entry_for(saved, tmp_path), tmp_path)

    assert op in reason
    assert not facts.loaded and facts.load_error.startswith("the saved model was refused: "), facts.load_error
    assert op in facts.load_error
    assert facts.predictions_file is None and not list(tmp_path.glob("pred_*.npy"))
    assert not marker.exists()


def test_unchecked_such_a_graph_writes_its_file_when_served(tmp_path: Path) -> None:
    # What the refusal prevents, shown once: loading runs nothing of it, serving runs its WriteFile.
    marker = tmp_path / "GRAPH_RAN"
    loaded = tf.saved_model.load(str(save_module(tmp_path, write_marker(marker))))
    assert not marker.exists()

    loaded.serve(np.ones((2, 4), np.float32))

    assert marker.exists()


def test_the_same_module_without_io_is_accepted_and_served(tmp_path: Path) -> None:
    saved = save_module(tmp_path, lambda x: tf.zeros((tf.shape(x)[0], 2)))

    facts = evaluate_model(entry_for(saved, tmp_path), tmp_path)

    assert graphs.refusal(saved) == ""
    assert facts.loaded, facts.load_error
    x = np.load(tmp_path / "x.npy")
    assert np.allclose(predictions(facts, tmp_path), x @ np.ones((4, 2)), atol=1e-5)
    assert facts.kernel_params == 8  # the module's 4x2 variable, trainable, though not named "kernel"


def test_checkpoint_io_where_the_model_is_served_is_refused(tmp_path: Path) -> None:
    # The exporter's own save and restore functions hold these operations and are allowed (above); a served
    # function that restores (or saves) a checkpoint is not.
    prefix = str(tmp_path / "elsewhere" / "ckpt")

    def body(x: Any) -> Any:
        (restored,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=["t"], shape_and_slices=[""], dtypes=[tf.float32])
        return tf.zeros((tf.shape(x)[0], 2)) + tf.reduce_sum(restored)

    reason = graphs.refusal(save_module(tmp_path, body))

    assert "checkpoints" in reason and "RestoreV2" in reason


def test_printing_is_allowed_to_stderr_and_refused_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "printed.txt"

    def to_stderr(x: Any) -> Any:
        tf.print("sum", tf.reduce_sum(x))
        return tf.zeros((tf.shape(x)[0], 2))

    def to_file(x: Any) -> Any:
        tf.print("sum", tf.reduce_sum(x), output_stream=f"file://{target}")
        return tf.zeros((tf.shape(x)[0], 2))

    assert graphs.refusal(save_module(tmp_path, to_stderr, "stderr")) == ""
    assert "PrintV2 (to a file)" in graphs.refusal(save_module(tmp_path, to_file, "file"))
    assert not target.exists()


def test_the_deny_list_covers_the_families_named_in_the_threat_model() -> None:
    for op in ("ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "TFRecordDataset",
               "TextLineDataset", "FixedLengthRecordDatasetV2", "LoadDataset",
               "SaveDatasetV2", "ImmutableConst", "CreateSummaryFileWriter", "WriteScalarSummary", "DebugIdentityV3",
               "RpcCall", "CollectiveReduceV2", "CollectiveSomethingNew", "DatasetFromGraph", "XlaCallModule"):
        assert graphs.is_denied(op), op
    for op in ("MatMul", "Conv2D", "Print", "PrintV2", "StringJoin", "ShardedFilename", "DebugGradientIdentity",
               "StatefulPartitionedCall", "SaveV2", "RestoreV2"):
        assert not graphs.is_denied(op), op


# ------------------------------------------------------------------------------------------------
# Files that are not a graph the grader can check
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "exported"
    model.export(str(path), format="tf_saved_model", verbose=False)
    return path


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        pytest.param(lambda data: b"\xff" * 200, "cannot be parsed", id="garbage"),
        pytest.param(lambda data: data[: len(data) // 2 + 1], "cannot be parsed", id="truncated"),
        pytest.param(lambda data: b"", "empty", id="empty"),
    ],
)
def test_a_garbage_or_truncated_saved_model_pb_is_refused(exported: Path, tmp_path: Path, damage: Any, why: str) -> None:
    pb = exported / "saved_model.pb"
    pb.write_bytes(damage(pb.read_bytes()))

    reason = graphs.refusal(exported)
    facts = evaluate_model(entry_for(exported, tmp_path), tmp_path)

    assert reason and why in reason
    assert not facts.loaded and facts.load_error == f"the saved model was refused: {reason}"


def test_a_missing_or_oversized_saved_model_pb_is_refused(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphs, "MAX_GRAPH_BYTES", 100)
    assert "larger than" in graphs.refusal(exported)
    (exported / "saved_model.pb").unlink()
    assert graphs.refusal(exported) == "it has no saved_model.pb"


def test_a_saved_model_without_an_object_graph_is_refused_because_loading_it_would_run_its_restore(exported: Path) -> None:
    # Measured: tf.saved_model.load takes the TensorFlow 1 path for such a model and runs the saver's
    # __inference__traced_restore function as it loads.
    from tensorflow.core.protobuf import saved_model_pb2

    pb = exported / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    assert graphs.refusal(exported) == ""
    proto.meta_graphs[0].ClearField("object_graph_def")
    pb.write_bytes(proto.SerializeToString())

    assert "not a TensorFlow 2 SavedModel" in graphs.refusal(exported)


# ------------------------------------------------------------------------------------------------
# One named input: {"pixels": x}
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def named_input_model() -> Any:
    inputs = keras.Input(shape=(4,), name="pixels")
    outputs = keras.layers.Dense(2, name="head")(inputs)
    return keras.Model(inputs={"pixels": inputs}, outputs=outputs)


def test_a_model_with_one_named_input_is_predicted_on_when_exported_as_a_graph(named_input_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "named_savedmodel"
    named_input_model.export(str(path), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(path))
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError):
        loaded.serve(x)  # the bare array does not bind to the traced dict signature

    wrap = input_structure(loaded.serve, "savedmodel")
    facts = evaluate_model(entry_for(path, tmp_path), tmp_path)

    assert wrap is not None and set(wrap(x)) == {"pixels"}
    assert facts.loaded and facts.kernel_params == 8, facts.load_error
    x = np.load(tmp_path / "x.npy")
    assert np.allclose(predictions(facts, tmp_path), named_input_model.predict({"pixels": x}, verbose=0), atol=1e-5)


def test_a_model_with_one_named_input_is_predicted_on_when_saved_as_keras(named_input_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "named.keras"
    named_input_model.save(path)
    reloaded = keras.saving.load_model(path, compile=False, safe_mode=True)

    wrap = input_structure(reloaded, "keras")
    facts = evaluate_model(entry_for(path, tmp_path, fmt="keras"), tmp_path)

    assert wrap is not None and set(wrap(np.ones((2, 4)))) == {"pixels"}
    assert facts.loaded and facts.source == "keras", facts.load_error
    x = np.load(tmp_path / "x.npy")
    assert np.allclose(predictions(facts, tmp_path), named_input_model.predict({"pixels": x}, verbose=0), atol=1e-5)


def test_a_bare_input_needs_no_structure(exported: Path) -> None:
    assert input_structure(tf.saved_model.load(str(exported)).serve, "savedmodel") is None
    inputs = keras.Input((4,))
    assert input_structure(keras.Model(inputs, keras.layers.Dense(1)(inputs)), "keras") is None
