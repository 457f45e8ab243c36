"""What the kernel-side recorder of grader/kernel/bootstrap.py captures of a training run, however it is written.

Each test installs the recorder in this process (as the set-up cell does in a kernel), trains a tiny
model the way a student might, flushes what was trained outside ``fit`` (as the end of a cell does),
and checks the records: one per training run, its origin, its step count, the rows it was trained on
(against the source arrays, at the recorded sample positions), and the weight penalties the training
loss really included. The recorder must also leave the student's results unchanged.
"""

from __future__ import annotations

import contextlib
import json
import random
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from grader.kernel import bootstrap  # noqa: E402
from grader.kernel.bootstrap import sample_positions  # noqa: E402

SEED = 0
ROWS = 20
BATCH = 5

# Keras 3 warns on every fit on a tf.data.Dataset that does not pass shuffle=False, recorder or not.
pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")


# ---- set-up ------------------------------------------------------------------------------------


@pytest.fixture
def seeded() -> Iterator[None]:
    """The kernel's seeds and op determinism for one test, then the process as it was: op determinism
    is a process-wide switch that makes unseeded random ops raise, so it must not outlive the test."""
    from keras.src.backend.common import global_state
    from tensorflow.python.framework import config as tf_config

    python_state, numpy_state = random.getstate(), np.random.get_state()
    was_deterministic = tf_config.is_op_determinism_enabled()
    reseed()
    try:
        yield
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()
        tf.random.set_seed(None)
        global_state.set_global_attribute("global_seed_generator", None)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def reseed() -> None:
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


class Recorder:
    """The recorder installed in a job dir, and what it has written there."""

    def __init__(self, job_dir: Path, hooks: dict[str, Any]) -> None:
        self.job_dir = job_dir
        self._hooks = hooks

    def flush(self) -> None:
        self._hooks["flush"]()

    def records(self) -> list[dict[str, Any]]:
        path = self.job_dir / "records.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def fits(self) -> list[dict[str, Any]]:
        self.flush()
        return [r for r in self.records() if r["type"] == "fit"]

    def samples(self, fingerprint: dict[str, Any]) -> np.ndarray:
        assert fingerprint["kind"] == "array", fingerprint
        return np.load(self.job_dir / fingerprint["samples_file"], allow_pickle=False)


@contextlib.contextmanager
def recording(job_dir: Path) -> Iterator[Recorder]:
    hooks = bootstrap._install_recorder(job_dir)
    try:
        yield Recorder(job_dir, hooks)
    finally:
        hooks["uninstall"]()


@pytest.fixture
def recorder(tmp_path: Path, seeded: None) -> Iterator[Recorder]:
    with recording(tmp_path / "artifacts") as rec:
        yield rec


# ---- data and models -----------------------------------------------------------------------------


def images() -> tuple[np.ndarray, np.ndarray]:
    """Tiny uint8 "images" (4x4x3: 48 values a row, more than are sampled) and class labels 0-2."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(ROWS, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 3, size=(ROWS,)).astype(np.int64)
    return x, y


def table() -> tuple[np.ndarray, np.ndarray]:
    """Six float32 features and one regression target a row."""
    rng = np.random.default_rng(11)
    return rng.normal(size=(ROWS, 6)).astype(np.float32), rng.normal(size=(ROWS, 1)).astype(np.float32)


def image_model(**dense: Any) -> Any:
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax", **dense)]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def table_model(compiled: bool = True, **dense: Any) -> Any:
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, activation="relu", **dense), keras.layers.Dense(1, **dense)]
    )
    if compiled:
        model.compile(optimizer="sgd", loss="mse")
    return model


def sampled_rows(x: np.ndarray, fingerprint: dict[str, Any]) -> np.ndarray:
    """``x``'s rows as the recorder samples them: the values at the recorded positions, in float64."""
    flat = x.reshape(x.shape[0], -1)
    assert fingerprint["sample_positions"] == sample_positions(flat.shape[1])
    return flat[:, fingerprint["sample_positions"]].astype(np.float64)


def row_set(rows: np.ndarray) -> list[tuple[float, ...]]:
    return sorted(tuple(float(v) for v in row) for row in rows)


def scaled(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255)


def assert_trained_on_rows(rec: Recorder, record: dict[str, Any], x: np.ndarray, *, shuffled: bool) -> None:
    """The record's rows are ``x``'s rows, each once (in any order when the data was shuffled)."""
    fp = record["x"]
    assert fp["shape"] == [x.shape[0], *x.shape[1:]]
    got, want = rec.samples(fp), sampled_rows(x, fp)
    if shuffled:
        assert row_set(got) == row_set(want)
    else:
        np.testing.assert_array_equal(got, want)


def penalty_kinds(record: dict[str, Any]) -> dict[str, str | None]:
    """Layer path -> the class of the kernel penalty its training loss included."""
    return {path: (p or {}).get("class_name") for path, p in record["trained_penalties"].items()}


def saved_config_regularizers(rec: Recorder, record: dict[str, Any]) -> list[str | None]:
    """The kernel regularizer classes the saved ``.keras`` file's config names, layer by layer."""
    with zipfile.ZipFile(rec.job_dir / record["artifact"]) as archive:
        config = json.loads(archive.read("config.json"))
    out = []
    for layer in config["config"]["layers"]:
        reg = layer["config"].get("kernel_regularizer")
        if "kernel_regularizer" in layer["config"]:
            out.append(reg["class_name"] if reg else None)
    return out


# ---- fit on streams --------------------------------------------------------------------------------


def test_a_shuffled_mapped_dataset_is_recorded_as_the_scaled_rows_of_one_epoch(recorder: Recorder) -> None:
    x, y = images()
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(ROWS, seed=SEED)
        .batch(BATCH)
        .map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    )

    image_model().fit(dataset, epochs=3, verbose=0)

    [record] = recorder.fits()
    assert record["origin"] == "tf.data" and record["epochs_run"] == 3
    assert record["x"]["dtype"] == "float32"
    assert_trained_on_rows(recorder, record, scaled(x), shuffled=True)
    # Each row keeps its own label.
    pairs = np.hstack([recorder.samples(record["x"]), recorder.samples(record["y"])])
    want = np.hstack([sampled_rows(scaled(x), record["x"]), y.reshape(-1, 1).astype(np.float64)])
    assert row_set(pairs) == row_set(want)


def test_a_dataset_of_dicts_keyed_by_the_input_name_is_recorded_by_its_rows(recorder: Recorder) -> None:
    x, y = table()
    inputs = keras.Input((6,), name="features")
    model = keras.Model({"features": inputs}, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")

    model.fit(tf.data.Dataset.from_tensor_slices(({"features": x}, y)).batch(BATCH), epochs=2, verbose=0)

    [record] = recorder.fits()
    assert record["origin"] == "tf.data"
    assert_trained_on_rows(recorder, record, x, shuffled=False)
    np.testing.assert_array_equal(recorder.samples(record["y"]), y.astype(np.float64))


def test_a_zipped_dataset_of_inputs_and_targets_is_recorded_by_its_rows(recorder: Recorder) -> None:
    x, y = table()
    inputs, targets = tf.data.Dataset.from_tensor_slices(x), tf.data.Dataset.from_tensor_slices(y)
    dataset = tf.data.Dataset.zip((inputs, targets)).batch(BATCH)

    table_model().fit(dataset, epochs=2, verbose=0)

    [record] = recorder.fits()
    assert record["origin"] == "tf.data"
    assert_trained_on_rows(recorder, record, x, shuffled=False)
    np.testing.assert_array_equal(recorder.samples(record["y"]), y.astype(np.float64))


class CountingBatches(keras.utils.PyDataset):  # type: ignore[misc,name-defined]
    """A ``PyDataset`` that counts the batches drawn from it."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y, self.drawn = x, y, 0

    def __len__(self) -> int:
        return len(self.x) // BATCH

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.drawn += 1
        part = slice(index * BATCH, (index + 1) * BATCH)
        return self.x[part], self.y[part]


def counting_generator(x: np.ndarray, y: np.ndarray, drawn: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    while True:
        for start in range(0, len(x), BATCH):
            drawn.append(start)
            yield x[start : start + BATCH], y[start : start + BATCH]


def drawn_when_fit(fit: Callable[[], int], tmp_path: Path, *, recorded: bool) -> int:
    """The batches ``fit()`` drew from its stream, with or without the recorder installed."""
    reseed()
    with recording(tmp_path) if recorded else contextlib.nullcontext():
        return fit()


def test_a_generator_with_steps_per_epoch_is_recorded_by_the_rows_of_one_epoch(recorder: Recorder) -> None:
    x, y = table()

    table_model().fit(counting_generator(x, y, []), steps_per_epoch=ROWS // BATCH, epochs=2, verbose=0)

    [record] = recorder.fits()
    assert record["origin"] == "generator"
    assert_trained_on_rows(recorder, record, x, shuffled=False)


def test_a_py_dataset_is_recorded_by_the_rows_of_one_epoch(recorder: Recorder) -> None:
    x, y = table()

    table_model().fit(CountingBatches(x, y), epochs=2, verbose=0)

    [record] = recorder.fits()
    assert record["origin"] == "PyDataset"
    assert_trained_on_rows(recorder, record, x, shuffled=True)  # fit shuffles a PyDataset's batches


def test_an_image_data_generator_flow_is_recorded_by_the_rows_it_served(recorder: Recorder) -> None:
    x, y = images()
    flow = tf.keras.preprocessing.image.ImageDataGenerator().flow(x, y, batch_size=BATCH, seed=SEED)

    image_model().fit(flow, epochs=2, verbose=0)

    [record] = recorder.fits()
    assert record["origin"] == "ImageDataGenerator"
    assert_trained_on_rows(recorder, record, x.astype(np.float32), shuffled=True)


def test_fingerprinting_a_py_dataset_draws_no_batch_that_training_does_not(tmp_path: Path, seeded: None) -> None:
    x, y = table()

    def fit() -> int:
        batches = CountingBatches(x, y)
        table_model().fit(batches, epochs=2, verbose=0)
        return batches.drawn

    plain = drawn_when_fit(fit, tmp_path / "plain", recorded=False)
    assert drawn_when_fit(fit, tmp_path / "recorded", recorded=True) == plain


def test_fingerprinting_a_generator_draws_no_batch_that_training_does_not(tmp_path: Path, seeded: None) -> None:
    x, y = table()

    def fit() -> int:
        drawn: list[int] = []
        table_model().fit(counting_generator(x, y, drawn), steps_per_epoch=ROWS // BATCH, epochs=2, verbose=0)
        return len(drawn)

    plain = drawn_when_fit(fit, tmp_path / "plain", recorded=False)
    assert drawn_when_fit(fit, tmp_path / "recorded", recorded=True) == plain


def test_fingerprinting_an_image_data_generator_flow_draws_no_batch_that_training_does_not(
    tmp_path: Path, seeded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = images()
    drawn: list[int] = []
    flow_class = type(tf.keras.preprocessing.image.ImageDataGenerator().flow(x, y, batch_size=BATCH))
    original = flow_class._get_batches_of_transformed_samples

    def counted(self: Any, index_array: Any) -> Any:
        drawn.append(len(index_array))
        return original(self, index_array)

    monkeypatch.setattr(flow_class, "_get_batches_of_transformed_samples", counted)

    def fit() -> int:
        drawn.clear()
        flow = tf.keras.preprocessing.image.ImageDataGenerator().flow(x, y, batch_size=BATCH, seed=SEED)
        image_model().fit(flow, epochs=2, verbose=0)
        return len(drawn)

    plain = drawn_when_fit(fit, tmp_path / "plain", recorded=False)
    assert plain > 0
    assert drawn_when_fit(fit, tmp_path / "recorded", recorded=True) == plain


# ---- validation ------------------------------------------------------------------------------------------


@pytest.fixture
def tapped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The origins of the data adapters the recorder taps, in order."""
    seen: list[str] = []
    original = bootstrap._tap_adapter

    def spy(adapter: Any, tap: Any) -> None:
        seen.append(tap.origin)
        original(adapter, tap)

    monkeypatch.setattr(bootstrap, "_tap_adapter", spy)
    return seen


def test_a_fit_with_validation_split_is_recorded_on_all_its_arrays_and_taps_no_adapter(
    recorder: Recorder, tapped: list[str]
) -> None:
    x, y = table()

    history = table_model().fit(x, y, validation_split=0.2, epochs=2, batch_size=BATCH, verbose=0)

    assert "val_loss" in history.history
    [record] = recorder.records()
    assert record["type"] == "fit" and record["origin"] == "array"
    assert record["validation_split"] == pytest.approx(0.2)
    assert_trained_on_rows(recorder, record, x, shuffled=False)
    assert tapped == []


def test_a_dataset_fit_taps_the_training_adapter_and_not_the_validation_one(
    recorder: Recorder, tapped: list[str]
) -> None:
    x, y = table()
    train = tf.data.Dataset.from_tensor_slices((x[:15], y[:15])).batch(BATCH)
    validation = tf.data.Dataset.from_tensor_slices((x[15:], y[15:])).batch(BATCH)

    table_model().fit(train, validation_data=validation, epochs=2, verbose=0)

    [record] = recorder.records()
    assert tapped == ["tf.data"]
    assert_trained_on_rows(recorder, record, x[:15], shuffled=False)


# ---- train_on_batch and custom loops -------------------------------------------------------------------


def test_train_on_batch_calls_are_recorded_as_one_run_with_every_batch(recorder: Recorder) -> None:
    x, y = table()
    model = table_model(kernel_regularizer=keras.regularizers.L2(0.01))

    for start in range(0, ROWS, BATCH):
        model.train_on_batch(x[start : start + BATCH], y[start : start + BATCH])

    assert recorder.records() == []  # recorded when the cell ends
    [record] = recorder.fits()
    assert record["origin"] == "train_on_batch" and record["steps"] == ROWS // BATCH
    assert_trained_on_rows(recorder, record, x, shuffled=False)
    np.testing.assert_array_equal(recorder.samples(record["y"]), y.astype(np.float64))
    assert set(penalty_kinds(record).values()) == {"L2"}


def train_step(model: Any, *, compiled: bool, adds_penalties: bool) -> Callable[[Any, Any], Any]:
    """A student's training step: GradientTape, a Keras loss and ``optimizer.apply_gradients``."""
    optimizer = keras.optimizers.SGD(learning_rate=0.05)
    loss_fn = keras.losses.MeanSquaredError()

    def step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            if adds_penalties:
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf.function(step) if compiled else step


def run_epochs(step: Callable[[Any, Any], Any], x: np.ndarray, y: np.ndarray, epochs: int = 1) -> None:
    for _ in range(epochs):
        for start in range(0, len(x), BATCH):
            step(tf.constant(x[start : start + BATCH]), tf.constant(y[start : start + BATCH]))


def gradient_tape_loop(
    model: Any, x: np.ndarray, y: np.ndarray, *, compiled: bool, adds_penalties: bool, epochs: int = 1
) -> None:
    run_epochs(train_step(model, compiled=compiled, adds_penalties=adds_penalties), x, y, epochs)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_a_gradient_tape_loop_is_recorded_with_its_steps_rows_and_penalties(recorder: Recorder, compiled: bool) -> None:
    x, y = table()
    model = table_model(compiled=False, kernel_regularizer=keras.regularizers.L1(0.01))

    gradient_tape_loop(model, x, y, compiled=compiled, adds_penalties=True, epochs=2)

    [record] = recorder.fits()
    assert record["origin"] == "custom_loop" and record["steps"] == 2 * ROWS // BATCH
    assert record["x"]["shape"] == [2 * ROWS, 6]
    np.testing.assert_array_equal(recorder.samples(record["x"]), np.vstack([x, x]).astype(np.float64))
    assert set(penalty_kinds(record).values()) == {"L1"}
    assert record["penalty_note"] == ""


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_a_loop_that_never_adds_model_losses_trained_no_penalty(recorder: Recorder, compiled: bool) -> None:
    x, y = table()
    model = table_model(compiled=False, kernel_regularizer=keras.regularizers.L2(0.01))

    gradient_tape_loop(model, x, y, compiled=compiled, adds_penalties=False)

    [record] = recorder.fits()
    assert record["origin"] == "custom_loop" and record["steps"] == ROWS // BATCH
    assert record["trained_penalties"] and all(p is None for p in record["trained_penalties"].values())
    assert "never added model.losses" in record["penalty_note"]
    assert saved_config_regularizers(recorder, record) == ["L2", "L2"]


def test_a_compiled_step_run_again_in_a_later_cell_is_still_recorded_with_its_penalties(recorder: Recorder) -> None:
    x, y = table()
    model = table_model(compiled=False, kernel_regularizer=keras.regularizers.L2(0.01))
    step = train_step(model, compiled=True, adds_penalties=True)

    run_epochs(step, x, y)
    recorder.flush()  # the cell ends
    run_epochs(step, x, y)  # the next cell trains on

    first, second = recorder.fits()
    assert first["steps"] == second["steps"] == ROWS // BATCH
    assert set(penalty_kinds(first).values()) == {"L2"}
    assert set(penalty_kinds(second).values()) == {"L2"}


def test_reading_model_losses_outside_the_loss_does_not_count_as_training_them(recorder: Recorder) -> None:
    x, y = table()
    model = table_model(compiled=False, kernel_regularizer=keras.regularizers.L2(0.01))
    assert len(model.losses) == 2  # a student checks the penalties are there

    gradient_tape_loop(model, x, y, compiled=False, adds_penalties=False)

    [record] = recorder.fits()
    assert all(p is None for p in record["trained_penalties"].values())
    assert "never added model.losses" in record["penalty_note"]


# ---- penalties set after building --------------------------------------------------------------------------


def regularize_built_layers(model: Any, penalty: Any) -> None:
    for layer in model.layers:
        if hasattr(layer, "kernel_regularizer"):
            layer.kernel_regularizer = penalty


def test_a_penalty_set_on_built_layers_is_saved_but_not_trained(recorder: Recorder) -> None:
    x, y = table()
    model = table_model(compiled=False)
    regularize_built_layers(model, keras.regularizers.L2(0.01))
    model.compile(optimizer="sgd", loss="mse")

    model.fit(x, y, epochs=1, verbose=0)

    [record] = recorder.fits()
    assert record["trained_penalties"] and all(p is None for p in record["trained_penalties"].values())
    assert saved_config_regularizers(recorder, record) == ["L2", "L2"]


@pytest.mark.parametrize("penalty", ["L1", "L2"])
def test_a_clone_of_a_model_given_penalties_after_building_trains_them(recorder: Recorder, penalty: str) -> None:
    x, y = table()
    model = table_model(compiled=False)
    regularize_built_layers(model, getattr(keras.regularizers, penalty)(0.01))

    clone = tf.keras.models.clone_model(model)
    assert len(clone.losses) > 0 and len(model.losses) == 0
    clone.compile(optimizer="sgd", loss="mse")
    clone.fit(x, y, epochs=1, verbose=0)

    [record] = recorder.fits()
    assert set(penalty_kinds(record).values()) == {penalty}


# ---- several runs ------------------------------------------------------------------------------------------


def test_two_models_trained_by_loops_in_one_cell_get_a_record_each(recorder: Recorder) -> None:
    x, y = table()
    first, second = table_model(), table_model(compiled=False)

    for start in range(0, ROWS, BATCH):
        first.train_on_batch(x[start : start + BATCH], y[start : start + BATCH])
    gradient_tape_loop(second, x, y, compiled=False, adds_penalties=False)

    records = recorder.fits()
    assert sorted(r["origin"] for r in records) == ["custom_loop", "train_on_batch"]
    assert len({r["model_key"] for r in records}) == 2
    assert len({r["artifact"] for r in records}) == 2
    assert all(r["steps"] == ROWS // BATCH for r in records)


def test_a_model_trained_by_a_loop_and_then_by_fit_is_recorded_loop_first(recorder: Recorder) -> None:
    x, y = table()
    model = table_model()

    gradient_tape_loop(model, x, y, compiled=False, adds_penalties=False)
    model.fit(x, y, epochs=1, verbose=0)

    loop, fit = recorder.fits()
    assert (loop["origin"], fit["origin"]) == ("custom_loop", "array")
    assert loop["index"] < fit["index"] and loop["model_key"] == fit["model_key"]
    assert loop["steps"] == ROWS // BATCH


# ---- the student's results ---------------------------------------------------------------------------------


def fit_histories(data: str) -> list[list[float]]:
    """The losses of two fits in a row, the second model built after the first was trained (and saved)."""
    reseed()
    x, y = images()
    histories = []
    for dropout in (0.0, 0.5):
        model = keras.Sequential(
            [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dropout(dropout), keras.layers.Dense(3)]
        )
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if data == "arrays":
            history = model.fit(scaled(x), y, epochs=3, batch_size=BATCH, verbose=0)
        else:
            dataset = tf.data.Dataset.from_tensor_slices((scaled(x), y)).shuffle(ROWS).batch(BATCH)
            history = model.fit(dataset, epochs=3, verbose=0)
        histories.append([float(v) for v in history.history["loss"]])
    return histories


@pytest.mark.parametrize("data", ["arrays", "tf.data"])
def test_the_recorder_does_not_change_a_fits_losses(tmp_path: Path, seeded: None, data: str) -> None:
    plain = fit_histories(data)
    with recording(tmp_path) as rec:
        recorded = fit_histories(data)

    assert recorded == plain
    assert len(rec.records()) == 2


def loop_weights(compiled: bool) -> list[np.ndarray]:
    reseed()
    x, y = table()
    model = table_model(compiled=False, kernel_regularizer=keras.regularizers.L2(0.01))
    gradient_tape_loop(model, x, y, compiled=compiled, adds_penalties=True, epochs=2)
    return [np.asarray(w) for w in model.get_weights()]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_the_recorder_does_not_change_a_custom_loops_weights(tmp_path: Path, seeded: None, compiled: bool) -> None:
    plain = loop_weights(compiled)
    with recording(tmp_path) as rec:
        recorded = loop_weights(compiled)
        assert len(rec.fits()) == 1

    assert len(recorded) == len(plain)
    for got, want in zip(recorded, plain):
        np.testing.assert_array_equal(got, want)


# ---- inference -----------------------------------------------------------------------------------------------


def test_predictions_and_plain_model_calls_record_nothing(recorder: Recorder) -> None:
    x, _ = table()
    model = table_model()

    model.predict(x, verbose=0)
    model(x)
    model(tf.constant(x), training=False)
    tf.function(lambda batch: model(batch))(tf.constant(x))

    assert recorder.fits() == []
    assert not (recorder.job_dir / "records.jsonl").exists()


# ---- uninstalling -------------------------------------------------------------------------------------------


def test_uninstalling_the_recorder_puts_keras_back_as_it_was(tmp_path: Path) -> None:
    from keras.src.trainers import data_adapters

    def entry_points() -> dict[str, Any]:
        names = "fit evaluate train_on_batch __call__ losses predict test_on_batch predict_on_batch".split()
        out = {f"Model.{name}": getattr(keras.Model, name) for name in names}
        out["Model.__dict__"] = sorted(keras.Model.__dict__)
        out["Optimizer.apply"] = keras.optimizers.Optimizer.apply
        out["get_data_adapter"] = data_adapters.get_data_adapter
        return out

    before = entry_points()
    with recording(tmp_path):
        assert entry_points()["Model.fit"] is not before["Model.fit"]

    assert entry_points() == before


# ---- the records' schema -------------------------------------------------------------------------


def test_the_records_of_every_training_path_are_read_back_strictly_by_the_orchestrators_schema(
    recorder: Recorder,
) -> None:
    from grader.records import EvaluateRecord, FitRecord, kernel_record

    x, y = table()
    model = table_model(kernel_regularizer=keras.regularizers.L1(0.01))
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, validation_split=0.25)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    for start in range(0, ROWS, BATCH):
        model.train_on_batch(x[start : start + BATCH], y[start : start + BATCH])
    recorder.flush()
    for compiled in (True, False):
        loop_model = table_model(compiled=False, kernel_regularizer=keras.regularizers.L2(0.01))
        gradient_tape_loop(loop_model, x, y, compiled=compiled, adds_penalties=True)
    recorder.flush()

    lines = recorder.records()
    fits = [kernel_record(FitRecord, line) for line in lines if line["type"] == "fit"]
    evals = [kernel_record(EvaluateRecord, line) for line in lines if line["type"] == "evaluate"]
    assert sorted(f.origin for f in fits) == ["array", "custom_loop", "custom_loop", "tf.data", "train_on_batch"]
    assert len(evals) == 1
    assert any(f.penalty_probes for f in fits)  # nested records (probes, variables, fingerprints) read too


def test_a_kernel_record_with_a_misspelt_or_missing_field_is_refused(recorder: Recorder) -> None:
    from grader.records import FitRecord, kernel_record

    x, y = table()
    table_model().fit(x, y, epochs=1, verbose=0)
    [line] = recorder.fits()
    kernel_record(FitRecord, line)
    misspelt = {("trained_penaltys" if k == "trained_penalties" else k): v for k, v in line.items()}
    with pytest.raises(ValueError, match="trained_penaltys"):
        kernel_record(FitRecord, misspelt)
    with pytest.raises(ValueError, match="interrupted"):
        kernel_record(FitRecord, {k: v for k, v in line.items() if k != "interrupted"})
    with pytest.raises(ValueError, match="samples_fil"):
        kernel_record(FitRecord, {**line, "x": {**line["x"], "samples_fil": "x.npy"}})
