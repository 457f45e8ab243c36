"""Weight penalties judged by what they add to the gradient during training, whatever API wrote them.

The kernel side (``grader/kernel/bootstrap.py: PenaltyProbes``) is exercised in this process, as the
set-up cell installs it in a kernel: each test trains a tiny model the way a student might and reads the
probes of its record through ``grader.judging.penalties``, which is also tested on its own with sums of
known gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import test_capture as capture  # noqa: E402
from test_capture import BATCH, ROWS, Recorder, images, table  # noqa: E402

from grader.judging import penalties  # noqa: E402
from grader.kernel.bootstrap import penalty_sums  # noqa: E402
from grader.records import (  # noqa: E402
    ArrayFingerprint,
    FitRecord,
    LayerFacts,
    ModelFacts,
    PenaltyProbe,
    RegularizerFacts,
    VariableProbe,
    from_jsonable,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
seeded = capture.seeded  # the kernel's seeds and op determinism for one test


@pytest.fixture
def recorder(tmp_path: Path, seeded: None) -> Iterator[Recorder]:
    with capture.recording(tmp_path / "artifacts") as rec:
        yield rec


def judged(record: dict[str, Any]) -> dict[str, str | None]:
    """Variable path (last two parts) -> the penalty kind the record's probes show (None: no penalty)."""
    fit = from_jsonable(FitRecord, record)
    found = penalties.measured(fit)
    assert found is not None, "no training step was probed"
    return {"/".join(m.path.split("/")[-2:]): (m.penalty.kind if m.penalty else None) for m in found}


def kernels(kinds: dict[str, str | None]) -> set[str | None]:
    return {kind for path, kind in kinds.items() if not path.endswith("bias")}


def cnn(**conv: Any) -> Any:
    return keras.Sequential([
        keras.Input((4, 4, 3)),
        keras.layers.Conv2D(2, 3, activation="relu", **conv),
        keras.layers.Flatten(),
        keras.layers.Dense(3, **conv),
    ])


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def fit(model: Any, x: Any = None, y: Any = None, epochs: int = 2, **compile_args: Any) -> None:
    if x is None:
        x, y = images()
        x = x.astype("float32") / 255
    model.compile(optimizer="adam", loss=LOSS, **compile_args)
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)


def loop(model: Any, penalty: Any, *, mode: str, inside_tape: bool = True) -> None:
    """A GradientTape loop whose loss adds ``penalty()`` (inside the tape, or computed before it)."""
    optimizer = keras.optimizers.Adam()
    x, y = images()
    x = x.astype("float32") / 255

    def step(xb: Any, yb: Any) -> Any:
        outside = penalty() if not inside_tape else 0.0  # computed before the tape records
        with tf.GradientTape() as tape:
            loss = LOSS(yb, model(xb, training=True)) + (penalty() if inside_tape else outside)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    for _ in range(2):
        for start in range(0, ROWS, BATCH):
            step(tf.constant(x[start : start + BATCH]), tf.constant(y[start : start + BATCH]))


def l1_of_kernels(model: Any, strength: float = 1e-3) -> Any:
    return lambda: strength * tf.add_n([tf.reduce_sum(tf.abs(w)) for w in model.trainable_weights if len(w.shape) >= 2])


def l2_of_kernels(model: Any, strength: float = 1e-3) -> Any:
    return lambda: strength * tf.add_n([tf.reduce_sum(tf.square(w)) for w in model.trainable_weights if len(w.shape) >= 2])


# ---- the kernel measures what training applied -------------------------------------------------------


def test_fit_with_a_builtin_kernel_regularizer_is_measured_as_that_penalty(recorder: Recorder) -> None:
    fit(cnn(kernel_regularizer=keras.regularizers.L1(1e-3)))
    [record] = recorder.fits()
    assert kernels(judged(record)) == {"l1"}
    # Keras's own train_step adds model.losses: its terms are measured once, at the trained weights.
    [probe] = record["penalty_probes"]
    assert probe["mode"] == "losses" and probe["step"] == 2 * ROWS // BATCH


def test_a_models_own_train_step_is_measured_on_its_traced_steps(recorder: Recorder) -> None:
    class Stepped(keras.Sequential):
        def train_step(self, data: Any) -> Any:
            x, y = data
            with tf.GradientTape() as tape:
                loss = LOSS(y, self(x, training=True)) + 1e-3 * tf.add_n(
                    [tf.reduce_sum(tf.square(w)) for w in self.trainable_weights if len(w.shape) >= 2]
                )
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            return {"loss": loss}

    model = Stepped([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    fit(model)
    [record] = recorder.fits()
    assert kernels(judged(record)) == {"l2"}
    assert [p["step"] for p in record["penalty_probes"]][:3] == [1, 2, 4]
    assert {p["mode"] for p in record["penalty_probes"]} == {"graph"}


def test_a_plain_function_and_a_regularizer_subclass_are_measured_by_what_they_compute(recorder: Recorder) -> None:
    class Squares(keras.regularizers.Regularizer):
        def __call__(self, w: Any) -> Any:
            return 1e-3 * tf.reduce_sum(tf.square(w))

    def absolute(w: Any) -> Any:
        return 1e-3 * tf.reduce_sum(tf.abs(w))

    fit(cnn(kernel_regularizer=absolute))
    fit(cnn(kernel_regularizer=Squares()))
    first, second = recorder.fits()
    assert kernels(judged(first)) == {"l1"} and kernels(judged(second)) == {"l2"}
    # A model Keras cannot rebuild without the notebook's code is saved as a graph as well.
    assert first["artifact_format"] == "savedmodel" and second["artifact_format"] == "savedmodel"


def test_a_penalty_added_with_add_loss_in_a_custom_layer_is_measured_on_its_weights(recorder: Recorder) -> None:
    class PenalisedDense(keras.layers.Layer):
        def build(self, shape: Any) -> None:
            self.w = self.add_weight(shape=(shape[-1], 3), initializer="glorot_uniform")
            self.b = self.add_weight(shape=(3,), initializer="zeros")

        def call(self, t: Any) -> Any:
            self.add_loss(1e-3 * tf.reduce_sum(tf.square(self.w)))
            return t @ self.w + self.b

    fit(keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), PenalisedDense()]))
    [record] = recorder.fits()
    kinds = judged(record)
    assert [kind for path, kind in kinds.items() if "penalised_dense" in path] == ["l2", None]


def test_an_activity_penalty_is_not_measured_as_a_weight_penalty(recorder: Recorder) -> None:
    fit(cnn(activity_regularizer=keras.regularizers.L1(1e-2)))
    [record] = recorder.fits()
    assert set(judged(record).values()) == {None}


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_a_hand_written_penalty_in_a_training_loop_is_measured(recorder: Recorder, mode: str) -> None:
    model = cnn()
    loop(model, l2_of_kernels(model) if mode == "graph" else l1_of_kernels(model), mode=mode)
    [record] = recorder.fits()
    assert kernels(judged(record)) == ({"l2"} if mode == "graph" else {"l1"})
    assert {p["mode"] for p in record["penalty_probes"]} == {mode}
    assert record["origin"] == ("xla_step" if mode == "xla" else "custom_loop")
    assert record["steps"] == 2 * ROWS // BATCH


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_penalty_that_never_reaches_the_gradient_is_not_measured(recorder: Recorder, mode: str) -> None:
    model = cnn()
    loop(model, l1_of_kernels(model), mode=mode, inside_tape=False)
    [record] = recorder.fits()
    assert set(judged(record).values()) == {None}


def test_an_xla_step_without_a_deterministic_kernel_runs_with_determinism_off_and_says_so(recorder: Recorder) -> None:
    tf.config.experimental.enable_op_determinism()  # as the kernel pins it (the fixture restores the process's)
    model = keras.Sequential([  # shapes of its own: XLA caches what it compiled in this process
        keras.Input((4, 4, 3)), keras.layers.Conv2D(5, 3, padding="same", kernel_regularizer=keras.regularizers.L2(1e-3)),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    loop(model, lambda: tf.add_n(model.losses), mode="xla")
    [record] = recorder.fits()
    assert record["origin"] == "xla_step" and record["steps"] == 2 * ROWS // BATCH
    assert any("determinism" in note for note in record["notes"])
    assert "l2" in kernels(judged(record))


def test_a_fit_on_named_inputs_is_recorded_by_the_rows_of_its_array(recorder: Recorder) -> None:
    x, y = images()
    inp = keras.Input((4, 4, 3), name="pixels")
    out = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    fit(keras.Model(inp, out), {"pixels": x.astype("float32")}, y, epochs=1)
    [record] = recorder.fits()
    assert record["x"]["kind"] == "array" and record["x"]["shape"] == [ROWS, 4, 4, 3]


def test_an_interrupted_fit_is_recorded_with_why_and_the_interrupt_goes_on(recorder: Recorder) -> None:
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                raise KeyboardInterrupt

    x, y = table()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(1e-3))])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=5, batch_size=BATCH, verbose=0, callbacks=[Stop()])
    [record] = recorder.fits()
    assert record["interrupted"].startswith("KeyboardInterrupt")
    assert record["epochs_run"] >= 1


# ---- judging the probes ---------------------------------------------------------------------------------


def sums(p: np.ndarray, w: np.ndarray) -> list[float]:
    return penalty_sums(p, w)


WEIGHTS = np.random.default_rng(3).normal(scale=0.05, size=(40, 8))


@pytest.mark.parametrize(
    ("gradient", "kind", "l1", "l2"),
    [
        (1e-4 * np.sign(WEIGHTS), "l1", 1e-4, 0.0),
        (2e-4 * WEIGHTS, "l2", 0.0, 1e-4),
        (1e-4 * np.sign(WEIGHTS) + 2e-4 * WEIGHTS, "l1_l2", 1e-4, 1e-4),
    ],
    ids=["l1", "l2", "l1_l2"],
)
def test_a_penalty_gradient_is_classified_by_its_form_and_strength(gradient: np.ndarray, kind: str, l1: float, l2: float) -> None:
    found = penalties.classify(sums(gradient, WEIGHTS))
    assert found is not None and found.kind == kind
    assert found.l1 == pytest.approx(l1, rel=1e-6, abs=1e-12) and found.l2 == pytest.approx(l2, rel=1e-6, abs=1e-12)


def test_a_gradient_that_depends_on_the_data_or_pushes_weights_out_is_no_weight_penalty() -> None:
    noise = np.random.default_rng(5).normal(scale=1e-3, size=WEIGHTS.shape)
    assert penalties.classify(sums(noise, WEIGHTS)) is None
    assert penalties.classify(sums(-1e-4 * np.sign(WEIGHTS), WEIGHTS)) is None
    assert penalties.classify(sums(np.zeros_like(WEIGHTS), WEIGHTS)) is None


def fit_record(probes: list[PenaltyProbe], origin: str = "array") -> FitRecord:
    none = ArrayFingerprint(kind="none")
    return FitRecord(
        1, "model1", "Sequential", 3, 1, 1, None, 0.0, 1.0, {}, none, none, none, "models/fit001.keras", "keras",
        None, None, origin=origin, penalty_probes=probes,
    )


def probe(step: int, gradient: np.ndarray, path: str = "sequential/dense/kernel", declared: str = "") -> PenaltyProbe:
    return PenaltyProbe(step, "graph", [VariableProbe(path, list(WEIGHTS.shape), sums(gradient, WEIGHTS), declared)])


def test_a_penalty_applied_to_early_steps_only_does_not_count() -> None:
    l1 = 1e-4 * np.sign(WEIGHTS)
    none = np.zeros_like(WEIGHTS)
    [early] = penalties.measured(fit_record([probe(1, l1), probe(2, l1), probe(4, none), probe(8, none)])) or []
    [steady] = penalties.measured(fit_record([probe(1, none), probe(2, l1), probe(4, l1), probe(8, l1)])) or []
    assert early.penalty is None
    assert steady.penalty is not None and steady.penalty.kind == "l1"


def layer(name: str, path: str, reg: RegularizerFacts | None = None, class_name: str = "Dense") -> LayerFacts:
    return LayerFacts(name, class_name, False, True, 0, reg, None, None, path=path)


def test_measured_penalties_replace_declared_ones_layer_by_layer_in_the_students_words() -> None:
    saved = ModelFacts(
        1, True, "", "keras",
        [layer("conv", "conv", RegularizerFacts("l2", 0, 1e-4, "L2"), "MyConv"), layer("dense", "dense")],
        0, {}, {}, None, "",
    )
    conv_w = np.random.default_rng(1).normal(size=(3, 3, 3, 2))
    probes = [
        PenaltyProbe(s, "eager", [
            VariableProbe("sequential/conv/kernel", [3, 3, 3, 2], sums(np.zeros_like(conv_w), conv_w)),
            VariableProbe("sequential/dense/kernel", list(WEIGHTS.shape), sums(1e-4 * np.sign(WEIGHTS), WEIGHTS)),
        ])
        for s in (1, 2, 4)
    ]
    facts, untrained, how = penalties.apply_measured(saved, fit_record(probes, origin="custom_loop"), cell=5)
    assert how == "measured" and untrained == ["conv"] and facts is not None
    conv, dense = facts.layers
    assert conv.kernel_regularizer is None and conv.is_conv  # a 4-D weight makes a convolution, whatever its class
    assert dense.kernel_regularizer is not None and dense.kernel_regularizer.kind == "l1"
    assert dense.kernel_regularizer.source == "an L1 term in the loss of your training loop in code cell 5"


def test_without_probes_the_declared_penalties_stand() -> None:
    saved = ModelFacts(1, True, "", "keras", [layer("dense", "dense", RegularizerFacts("l1", 1e-4, 0, "L1"))], 0, {}, {}, None, "")
    facts, untrained, how = penalties.apply_measured(saved, fit_record([]), cell=1)
    assert how == "declared" and facts == saved and untrained == []
