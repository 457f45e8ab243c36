"""Tests of the fingerprint helpers of grader/kernel/bootstrap.py (shared by the kernel and the grader).

``install`` patches a live kernel and is exercised by the end-to-end runs; the recorder is also run here once, on a tiny model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grader.kernel.bootstrap import HASH_THREAD_BYTES, SAMPLE_WIDTH, channel_stats, fingerprint_array, sample_positions
from grader.records import ArrayFingerprint, ChannelStats, from_jsonable


def test_narrow_rows_are_sampled_at_every_position() -> None:
    assert sample_positions(13) == list(range(13))
    assert sample_positions(SAMPLE_WIDTH) == list(range(SAMPLE_WIDTH))


def test_wide_rows_are_sampled_at_a_fixed_sorted_subset() -> None:
    positions = sample_positions(3072)

    assert len(positions) == SAMPLE_WIDTH
    assert positions == sorted(set(positions))
    assert 0 <= positions[0] and positions[-1] < 3072
    assert positions == sample_positions(3072)  # the kernel and the grader must agree
    assert all(isinstance(p, int) for p in positions)


def test_none_is_recorded_as_absent() -> None:
    assert fingerprint_array(None, None, None) == {"kind": "none"}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param((i for i in range(3)), id="generator"),
        pytest.param(np.array(["a", "b"]), id="strings"),
        pytest.param(np.zeros((0, 13)), id="empty"),
        pytest.param(3.0, id="scalar"),
        pytest.param([[1, 2], [3]], id="ragged"),
    ],
)
def test_values_numpy_cannot_view_as_numbers_are_unsupported(value: object) -> None:
    fp = fingerprint_array(value, None, None)

    assert fp["kind"] == "unsupported"
    assert fp["note"]


def test_fingerprint_of_a_table_has_per_column_statistics_and_row_samples(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float64).reshape(5, 4)
    samples_path = tmp_path / "samples" / "fit001_x.npy"

    fp = fingerprint_array(x, samples_path, tmp_path)

    assert fp["kind"] == "array"
    assert fp["shape"] == [5, 4] and fp["dtype"] == "float64"
    assert fp["samples_file"] == "samples/fit001_x.npy"
    assert fp["sample_positions"] == [0, 1, 2, 3]
    assert fp["channels"][1] == {"mean": 9.0, "std": float(np.std([1, 5, 9, 13, 17])), "min": 1.0, "max": 17.0}
    samples = np.load(samples_path, allow_pickle=False)
    assert samples.dtype == np.float64
    assert np.array_equal(samples, x)


def test_fingerprint_of_images_has_one_channel_per_colour_and_samples_at_fixed_positions(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)

    fp = fingerprint_array(images, tmp_path / "x.npy", tmp_path)

    assert len(fp["channels"]) == 3
    assert fp["channels"][2]["mean"] == pytest.approx(images[..., 2].mean())
    assert fp["sample_positions"] == sample_positions(192)
    samples = np.load(tmp_path / "x.npy")
    assert samples.shape == (6, SAMPLE_WIDTH)
    assert np.array_equal(samples, images.reshape(6, -1)[:, sample_positions(192)].astype(np.float64))


@pytest.mark.parametrize(
    "cols",
    [
        pytest.param(np.random.default_rng(1).normal(1000.0, 0.01, (70_001, 3)).astype(np.float32), id="offset-floats"),
        pytest.param(np.random.default_rng(2).integers(0, 256, (3_000, 300), dtype=np.uint8), id="wide-bytes"),
        pytest.param(np.random.default_rng(3).normal(0.0, 1.0, (354, 13)), id="table"),
        pytest.param(np.array([[True, False], [True, True], [False, False]]), id="booleans"),
        pytest.param(np.arange(12, dtype=np.int64).reshape(-1, 1), id="one-column"),
    ],
)
def test_channel_statistics_in_blocks_agree_with_whole_column_ones(cols: np.ndarray) -> None:
    # Small blocks force many of them, the last one partial: their combination must not lose precision.
    stats = channel_stats(cols, block_values=1_000)

    as_float = cols.astype(np.float64)
    assert [s["mean"] for s in stats] == pytest.approx(list(as_float.mean(axis=0)), rel=1e-12, abs=1e-12)
    assert [s["std"] for s in stats] == pytest.approx(list(as_float.std(axis=0)), rel=1e-9, abs=1e-12)
    assert [s["min"] for s in stats] == list(as_float.min(axis=0))
    assert [s["max"] for s in stats] == list(as_float.max(axis=0))


def test_a_dataframe_is_fingerprinted_like_its_values(tmp_path: Path) -> None:
    frame = pd.DataFrame({"CRIM": [0.1, 0.2, 0.3], "TAX": [296.0, 242.0, 222.0]})

    from_frame = fingerprint_array(frame, None, None)
    from_array = fingerprint_array(frame.to_numpy(), None, None)

    assert from_frame == from_array
    assert from_frame["samples_file"] is None
    assert not any(tmp_path.iterdir())


def test_the_hash_tells_contents_and_dtypes_apart() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    same = fingerprint_array(x.copy(), None, None)["sha256"]
    assert fingerprint_array(x, None, None)["sha256"] == same
    assert fingerprint_array(x.astype(np.float64), None, None)["sha256"] != same
    x[0, 0] = 100
    assert fingerprint_array(x, None, None)["sha256"] != same


def test_a_large_array_hashed_beside_its_statistics_has_the_hash_of_all_its_bytes() -> None:
    rows = HASH_THREAD_BYTES // (8 * 8 * 3 * 4) + 7  # float32 images: over the size hashed by a second thread
    images = np.random.default_rng(4).random((rows, 8, 8, 3), dtype=np.float32)
    assert images.nbytes >= HASH_THREAD_BYTES

    fp = fingerprint_array(images, None, None)

    assert fp["sha256"] == hashlib.sha256(images.tobytes()).hexdigest()
    assert fp["channels"][0]["mean"] == pytest.approx(float(images[..., 0].astype(np.float64).mean()), rel=1e-12)


def test_a_fingerprint_is_json_and_reads_back_as_an_array_fingerprint(tmp_path: Path) -> None:
    fp = fingerprint_array(np.ones((4, 3), dtype=np.int64), tmp_path / "s.npy", tmp_path)

    record = from_jsonable(ArrayFingerprint, json.loads(json.dumps(fp)))

    assert record.kind == "array" and record.shape == [4, 3]
    assert record.channels == [ChannelStats(1.0, 0.0, 1.0, 1.0)] * 3
    assert record.samples_file == "s.npy"


def test_layer_facts_written_for_subclassed_models_read_back_with_inspect() -> None:
    keras = pytest.importorskip("keras")
    from grader.evaluator.inspect import regularizer_from_config
    from grader.kernel.bootstrap import _layer_facts

    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3, kernel_regularizer="l1", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(1e-4), name="out"),
        ]
    )

    entries = {e["name"]: e for e in json.loads(json.dumps(_layer_facts(model)))}

    conv = regularizer_from_config(entries["conv"]["kernel_regularizer"])
    out = regularizer_from_config(entries["out"]["kernel_regularizer"])
    assert conv is not None and conv.kind == "l1" and conv.l1 == pytest.approx(0.01)
    assert out is not None and out.kind == "l2" and out.l2 == pytest.approx(1e-4)
    assert entries["flat"]["kernel_regularizer"] is None
    assert entries["conv"]["kernel_variable"] and entries["flat"]["kernel_variable"] is None


def test_the_recorder_reports_each_epoch_and_keeps_the_students_own_callbacks(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    from grader.kernel.bootstrap import _install_recorder

    seen: list[tuple[int, dict[str, float]]] = []

    class Mine(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            seen.append((epoch, dict(logs or {})))

    hooks = _install_recorder(tmp_path)
    try:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        x, y = np.ones((8, 3), dtype="float32"), np.zeros((8, 1), dtype="float32")
        history = model.fit(x, y, epochs=3, verbose=0, callbacks=[Mine()])
    finally:
        hooks["uninstall"]()  # every patched method, so later tests in this process run plain TensorFlow

    assert json.loads((tmp_path / "progress.json").read_text()) == {"fit": 1, "epoch": 3, "epochs": 3}
    assert [epoch for epoch, _ in seen] == [0, 1, 2] and all("loss" in logs for _, logs in seen)
    assert len(history.history["loss"]) == 3
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [(r["type"], r["epochs_run"]) for r in records] == [("fit", 3)]
