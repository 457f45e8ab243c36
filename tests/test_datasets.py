"""Tests of the offline dataset store (grader/datasets/): Boston as StatLib serves it, CIFAR-10 as Keras loads it."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from grader import datasets
from grader.datasets import CIFAR10_CLASSES, OFFICIAL_CIFAR10_SHA256, DatasetStore

SERVED_FILES = {
    "cifar10_x_train.npy",
    "cifar10_y_train.npy",
    "cifar10_x_test.npy",
    "cifar10_y_test.npy",
    "boston.txt",
    "manifest.json",
}

# The tiny JPEG archive: a solid colour per class, so decoded pixels say which image they came from.
TINY_TRAIN_PER_CLASS = 3
TINY_TEST_PER_CLASS = 2


def class_colour(label: int) -> tuple[int, int, int]:
    return (label * 25, 250 - label * 25, 128)


def write_tiny_jpeg_archive(path: Path, variant: int = 0) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", TINY_TRAIN_PER_CLASS), ("test", TINY_TEST_PER_CLASS)):
            for label, cls in enumerate(CIFAR10_CLASSES):
                for number in range(count):
                    buffer = io.BytesIO()
                    colour = tuple(min(255, c + variant) for c in class_colour(label))
                    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{cls}/{number:04d}.jpg")
                    info.size = len(buffer.getvalue())
                    tar.addfile(info, io.BytesIO(buffer.getvalue()))


def official_batch(first_label: int, count: int, protocol: int = 4) -> bytes:
    """A batch in the official layout: b'data' (N, 3072) uint8 channels first, b'labels' a list."""
    data = (np.arange(count * 3072, dtype=np.int64) % 251).astype(np.uint8).reshape(count, 3072)
    data[:, 0] = np.arange(first_label, first_label + count)  # tells the images apart
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [(first_label + i) % 10 for i in range(count)],
        b"data": data,
        b"filenames": [f"img_{first_label + i}.png".encode() for i in range(count)],
    }
    return pickle.dumps(batch, protocol=protocol)


def write_batches_dir(folder: Path, per_batch: int = 2) -> None:
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(official_batch((i - 1) * per_batch, per_batch))
    (folder / "test_batch").write_bytes(official_batch(100, per_batch))


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory: pytest.TempPathFactory) -> DatasetStore:
    # Module-scoped: decoding the 6,000 shipped JPEGs is the slowest step, do it once.
    return DatasetStore("smoke", tmp_path_factory.mktemp("cache"), keras_home=tmp_path_factory.mktemp("keras"))


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_tiny_jpeg_archive(folder / "cifar10-jpeg.tar.gz")
    return folder


def csv_arrays() -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(datasets.BOSTON_CSV)
    values = frame.to_numpy(np.float64)
    return values[:, :13], values[:, 13]


# -- Boston ------------------------------------------------------------------------------------


def test_statlib_text_round_trips_through_the_notebooks_parser() -> None:
    text = datasets.boston_statlib_text()
    raw = pd.read_csv(io.StringIO(text), sep=r"\s+", skiprows=22, header=None)
    X = np.hstack([raw.values[::2, :], raw.values[1::2, :2]])
    y = raw.values[1::2, 2]
    X_csv, y_csv = csv_arrays()
    assert X.dtype == np.float64 and y.dtype == np.float64
    assert np.array_equal(X, X_csv)
    assert np.array_equal(y, y_csv)


def test_statlib_text_has_22_header_lines_then_two_line_records() -> None:
    lines = datasets.boston_statlib_text().splitlines()
    assert len(lines) == 22 + 2 * 506
    assert lines[0].startswith(" The Boston house-price data")
    first, second = lines[22], lines[23]
    assert first.startswith(" ") and len(first.split()) == 11
    assert second.startswith(" ") and second.split() == ["396.9", "4.98", "24"]


def test_statlib_numbers_equal_the_csv_tokens_parsed_by_python() -> None:
    # Independent of pandas' float parser: the CSV's text tokens through float().
    with datasets.BOSTON_CSV.open(newline="") as f:
        rows = [[float(token) for token in row] for row in list(csv.reader(f))[1:]]
    X, y = datasets.load_boston()
    assert np.array_equal(X, np.array(rows)[:, :13])
    assert np.array_equal(y, np.array(rows)[:, 13])


def test_load_boston_returns_float64_features_and_medv() -> None:
    X, y = datasets.load_boston()
    assert X.shape == (506, 13) and X.dtype == np.float64
    assert y.shape == (506,) and y.dtype == np.float64
    assert y[0] == 24.0 and X[0, 0] == 0.00632


def test_boston_split_is_the_notebooks_70_30_split() -> None:
    X_train, X_test, y_train, y_test = datasets.boston_split()
    assert X_train.shape == (354, 13) and X_test.shape == (152, 13)
    assert y_train.shape == (354,) and y_test.shape == (152,)
    again = datasets.boston_split()
    assert all(np.array_equal(a, b) for a, b in zip((X_train, X_test, y_train, y_test), again))


# -- profiles and errors ----------------------------------------------------------------------


def test_bad_profile_raises_value_error_naming_the_profile_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--profile"):
        DatasetStore("medium", tmp_path)


def test_full_profile_with_nothing_found_lists_every_place_looked(tmp_path: Path) -> None:
    data_dir, keras_home = tmp_path / "data", tmp_path / "keras"
    data_dir.mkdir()
    store = DatasetStore("full", tmp_path / "cache", data_dir, keras_home=keras_home)
    with pytest.raises(FileNotFoundError) as caught:
        store.cifar10()
    message = str(caught.value)
    for place in (
        data_dir / "cifar-10-python.tar.gz",
        data_dir / "cifar-10-batches-py",
        data_dir / "cifar10-jpeg.tar.gz",
        keras_home / "datasets" / "cifar-10-batches-py",
        keras_home / "datasets" / "cifar-10-batches-py.tar.gz",
    ):
        assert str(place) in message
    assert "--data-dir DIR" in message


def test_full_profile_without_data_dir_says_data_dir_was_not_given(tmp_path: Path) -> None:
    store = DatasetStore("full", tmp_path / "cache", keras_home=tmp_path / "keras")
    with pytest.raises(FileNotFoundError, match=r"--data-dir \(not given\)"):
        _ = store.fingerprint


def test_archive_named_like_the_official_one_with_another_hash_is_refused(tmp_path: Path) -> None:
    write_tiny_jpeg_archive(tmp_path / "cifar-10-python.tar.gz")
    store = DatasetStore("full", tmp_path / "cache", tmp_path, keras_home=tmp_path / "keras")
    with pytest.raises(ValueError, match=OFFICIAL_CIFAR10_SHA256):
        store.cifar10()


# -- smoke subset -------------------------------------------------------------------------------


def test_smoke_subset_has_keras_shapes_and_dtypes(smoke_store: DatasetStore) -> None:
    data = smoke_store.cifar10()
    assert data.x_train.shape == (5000, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.y_train.shape == (5000, 1) and data.y_train.dtype == np.uint8
    assert data.x_test.shape == (1000, 32, 32, 3) and data.x_test.dtype == np.uint8
    assert data.y_test.shape == (1000, 1) and data.y_test.dtype == np.uint8


def test_smoke_subset_has_500_train_and_100_test_images_per_class(smoke_store: DatasetStore) -> None:
    data = smoke_store.cifar10()
    assert np.bincount(data.y_train[:, 0], minlength=10).tolist() == [500] * 10
    assert np.bincount(data.y_test[:, 0], minlength=10).tolist() == [100] * 10


def test_smoke_subset_is_not_grouped_by_class(smoke_store: DatasetStore) -> None:
    for labels in (smoke_store.cifar10().y_train[:, 0], smoke_store.cifar10().y_test[:, 0]):
        same_as_previous = np.mean(labels[1:] == labels[:-1])
        assert same_as_previous < 0.2  # about 0.1 when shuffled, 0.99 when grouped


def test_smoke_images_are_real_photographs_not_blank(smoke_store: DatasetStore) -> None:
    x = smoke_store.cifar10().x_train
    assert x.std(axis=(1, 2, 3)).min() > 1.0
    assert len({x[i].tobytes() for i in range(200)}) == 200


def test_smoke_file_stores_jpeg_bytes_and_loads_without_pickle() -> None:
    with np.load(datasets.SMOKE_NPZ, allow_pickle=False) as npz:
        offsets = npz["train_offsets"]
        first = npz["train_jpeg"][offsets[0] : offsets[1]].tobytes()
        assert first[:2] == b"\xff\xd8"  # JPEG start-of-image marker: stored as encoded, not re-encoded
        assert str(npz["source_sha256"]) == "8d425d830249859a729686327ad715494bbc8e2a9bd0e7743e7c37c3e9f22cf2"
    assert datasets.SMOKE_NPZ.stat().st_size < 4_000_000


def test_served_arrays_are_read_only(smoke_store: DatasetStore) -> None:
    with pytest.raises(ValueError):
        smoke_store.cifar10().x_train[0, 0, 0, 0] = 1


# -- materialize ------------------------------------------------------------------------------


def test_materialize_is_idempotent_and_files_load_without_pickle(smoke_store: DatasetStore) -> None:
    folder = smoke_store.materialize()
    assert folder.name == f"smoke-{smoke_store.fingerprint[:16]}"
    assert {p.name for p in folder.iterdir()} == SERVED_FILES
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    assert smoke_store.materialize() == folder
    assert DatasetStore("smoke", smoke_store.cache_dir).materialize() == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    assert [p.name for p in smoke_store.cache_dir.iterdir()] == [folder.name]  # no temp dirs left

    data = smoke_store.cifar10()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        loaded = np.load(folder / f"cifar10_{name}.npy", allow_pickle=False)
        assert loaded.dtype == np.uint8 and np.array_equal(loaded, getattr(data, name))
    assert (folder / "boston.txt").read_text(encoding="ascii") == datasets.boston_statlib_text()


def test_manifest_records_profile_fingerprint_shapes_and_hashes(smoke_store: DatasetStore) -> None:
    folder = smoke_store.materialize()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["profile"] == "smoke"
    assert manifest["fingerprint"] == smoke_store.fingerprint
    assert manifest["files"]["cifar10_x_train.npy"]["shape"] == [5000, 32, 32, 3]
    assert manifest["files"]["cifar10_y_test.npy"]["shape"] == [1000, 1]
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == datasets._sha256_file(folder / name)


def test_materialize_survives_another_process_finishing_first(tiny_data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keras_home = tmp_path / "keras"
    winner = DatasetStore("full", cache, tiny_data_dir, keras_home=keras_home)
    loser = DatasetStore("full", cache, tiny_data_dir, keras_home=keras_home)
    write_loser_files = loser._write_served_files

    def finish_the_winner_meanwhile(folder: Path) -> None:
        write_loser_files(folder)
        winner.materialize()

    loser._write_served_files = finish_the_winner_meanwhile  # type: ignore[method-assign]
    folder = loser.materialize()
    assert folder == winner.materialize()
    assert [p.name for p in cache.iterdir()] == [folder.name]
    assert {p.name for p in folder.iterdir()} == SERVED_FILES


# -- full profile -----------------------------------------------------------------------------


def test_full_profile_decodes_a_jpeg_archive_from_data_dir(tiny_data_dir: Path, tmp_path: Path) -> None:
    store = DatasetStore("full", tmp_path / "cache", tiny_data_dir, keras_home=tmp_path / "keras")
    assert store.cifar10_source.kind == "jpeg-archive"
    data = store.cifar10()
    assert data.x_train.shape == (10 * TINY_TRAIN_PER_CLASS, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.y_train.shape == (10 * TINY_TRAIN_PER_CLASS, 1) and data.y_train.dtype == np.uint8
    assert data.x_test.shape == (10 * TINY_TEST_PER_CLASS, 32, 32, 3)
    assert np.bincount(data.y_test[:, 0], minlength=10).tolist() == [TINY_TEST_PER_CLASS] * 10
    # Labels come from the class folders: every image shows its class's colour.
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        expected = np.array([class_colour(int(label)) for label in y[:, 0]], dtype=np.int16)
        assert np.abs(x.astype(np.int16).mean(axis=(1, 2)) - expected).max() < 4
    assert not np.all(np.diff(data.y_train[:, 0].astype(int)) >= 0)  # shuffled, not by class


def test_full_jpeg_profile_is_the_same_on_every_run(tiny_data_dir: Path, tmp_path: Path) -> None:
    one = DatasetStore("full", tmp_path / "a", tiny_data_dir, keras_home=tmp_path / "keras").cifar10()
    two = DatasetStore("full", tmp_path / "b", tiny_data_dir, keras_home=tmp_path / "keras").cifar10()
    assert np.array_equal(one.y_train, two.y_train) and np.array_equal(one.x_test, two.x_test)


def test_fingerprint_changes_with_profile_and_source_bytes(tiny_data_dir: Path, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    write_tiny_jpeg_archive(other_dir / "cifar10-jpeg.tar.gz", variant=3)
    keras_home = tmp_path / "keras"
    fingerprints = {
        DatasetStore("smoke", tmp_path, keras_home=keras_home).fingerprint,
        DatasetStore("full", tmp_path, tiny_data_dir, keras_home=keras_home).fingerprint,
        DatasetStore("full", tmp_path, other_dir, keras_home=keras_home).fingerprint,
    }
    assert len(fingerprints) == 3
    assert DatasetStore("full", tmp_path / "x", tiny_data_dir, keras_home=keras_home).fingerprint in fingerprints


def test_full_profile_reads_official_batches_from_the_keras_cache(tmp_path: Path) -> None:
    keras_home = tmp_path / "keras"
    write_batches_dir(keras_home / "datasets" / "cifar-10-batches-py")
    store = DatasetStore("full", tmp_path / "cache", keras_home=keras_home)
    data = store.cifar10()
    assert store.cifar10_source.kind == "batches-dir"
    assert data.x_train.shape == (10, 32, 32, 3) and data.y_train.shape == (10, 1)
    assert data.x_test.shape == (2, 32, 32, 3) and data.y_test[:, 0].tolist() == [0, 1]
    # Channels first in the batch, channels last as Keras serves them; order kept as Keras does.
    batch = pickle.loads((keras_home / "datasets" / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    chw = batch[b"data"][1].reshape(3, 32, 32)
    assert np.array_equal(data.x_train[3], chw.transpose(1, 2, 0))
    assert data.y_train[:, 0].tolist() == list(range(10))


def test_batches_that_name_other_globals_are_refused_not_run(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_batches_dir(folder)

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[()]]:
            return (os.getcwd, ())  # harmless if it did run

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    store = DatasetStore("full", tmp_path / "cache", tmp_path / "data", keras_home=tmp_path / "keras")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        store.cifar10()
