"""The grader's offline dataset store: Boston Housing as StatLib serves it, CIFAR-10 as Keras loads it.

Grading runs without network access, so every dataset a student notebook asks for is produced here
from files shipped in ``grader/data`` (the "smoke" profile) or supplied by the instructor (the
"full" profile), and written once per data version into a cache directory the kernel reads from.

Command line (run from the project root)::

    python -m grader.datasets build-smoke --source PATH/cifar10-jpeg.tar.gz --out grader/data/cifar10-smoke.npz
    python -m grader.datasets materialize --profile smoke --cache-dir DIR [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from grader.outputs import write_atomic

PROFILES = ("smoke", "full", "tiny")  # the dataset profiles this module serves (--profile)

__all__ = [
    "BOSTON_COLUMNS",
    "CIFAR10_CLASSES",
    "FORMAT_VERSION",
    "OFFICIAL_CIFAR10_SHA256",
    "PROFILES",
    "SEED",
    "CifarArrays",
    "CifarSource",
    "DatasetStore",
    "boston_split",
    "boston_statlib_text",
    "build_smoke",
    "load_boston",
    "parse_boston_statlib",
]

# Bump whenever the bytes served for the same source change (decoding, ordering, file layout), so
# caches written by an older grader are not reused.
FORMAT_VERSION = 1

# "tiny" is for the grader's own tests: the first TINY_SIZES images of each smoke split. The smoke
# set is stored shuffled and stratified, so a prefix keeps the classes roughly balanced.
TINY_SIZES = {"train": 1000, "test": 200}

# One seed for every random choice made here (smoke subset, shuffling of the JPEG copy), so the
# shipped subset can be rebuilt bit for bit and the full JPEG profile is the same on every machine.
SEED = 20261128

SMOKE_TRAIN_PER_CLASS = 500
SMOKE_TEST_PER_CLASS = 100

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

OFFICIAL_CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
OFFICIAL_BATCH_NAMES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

BOSTON_COLUMNS = (
    "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT", "MEDV",
)  # fmt: skip

# The notebook skips exactly this many lines before the records.
STATLIB_HEADER_LINES = 22

# The description StatLib puts above the records (http://lib.stat.cmu.edu/datasets/boston).
_STATLIB_HEADER = """\
 The Boston house-price data of Harrison, D. and Rubinfeld, D.L. 'Hedonic
 prices and the demand for clean air', J. Environ. Economics & Management,
 vol.5, 81-102, 1978.   Used in Belsley, Kuh & Welsch, 'Regression diagnostics
 ...', Wiley, 1980.   N.B. Various transformations are used in the table on
 pages 244-261 of the latter.

 Variables in order:
 CRIM     per capita crime rate by town
 ZN       proportion of residential land zoned for lots over 25,000 sq.ft.
 INDUS    proportion of non-retail business acres per town
 CHAS     Charles River dummy variable (= 1 if tract bounds river; 0 otherwise)
 NOX      nitric oxides concentration (parts per 10 million)
 RM       average number of rooms per dwelling
 AGE      proportion of owner-occupied units built prior to 1940
 DIS      weighted distances to five Boston employment centres
 RAD      index of accessibility to radial highways
 TAX      full-value property-tax rate per $10,000
 PTRATIO  pupil-teacher ratio by town
 B        1000(Bk - 0.63)^2 where Bk is the proportion of blacks by town
 LSTAT    % lower status of the population
 MEDV     Median value of owner-occupied homes in $1000's

"""

# StatLib wraps each record after 11 values; B, LSTAT and MEDV go on the second line.
_STATLIB_FIRST_LINE_VALUES = 11

# Located from this file, never from the working directory, so the store works wherever the
# grader is run from. These are paths, not state: nothing here is ever reassigned.
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data"
BOSTON_CSV = PACKAGE_DATA_DIR / "boston_house_prices.csv"
SMOKE_NPZ = PACKAGE_DATA_DIR / "cifar10-smoke.npz"

# Inside cifar10-jpeg.tar.gz; "./" prefixes are stripped first, for archives re-made with `tar -C`.
_JPEG_MEMBER = re.compile(r"cifar10-jpeg/(train|test)/([a-z]+)/(\d+)\.jpe?g")

_SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------
# Boston Housing
# --------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _boston_csv_records(csv_path: Path = BOSTON_CSV) -> list[list[str]]:
    """The CSV's records as the original text tokens (header checked and dropped)."""
    with csv_path.open(newline="", encoding="ascii") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != BOSTON_COLUMNS:
        raise ValueError(f"{csv_path}: expected the header {','.join(BOSTON_COLUMNS)}")
    records = [row for row in rows[1:] if row]
    for number, row in enumerate(records, start=2):
        if len(row) != len(BOSTON_COLUMNS):
            raise ValueError(f"{csv_path}, line {number}: expected {len(BOSTON_COLUMNS)} values, found {len(row)}")
    return records


def boston_statlib_text() -> str:
    """The text ``http://lib.stat.cmu.edu/datasets/boston`` serves, built from the shipped CSV.

    22 description lines, then each record over two lines (11 values, then B, LSTAT, MEDV).
    The CSV's own number tokens are written unchanged (only padded), so the notebook's parser reads
    back exactly the floats the CSV holds: reformatting (e.g. ``18`` as ``18.00``) would put the
    equality at the mercy of the float parser.
    """
    records = _boston_csv_records()
    first = [row[:_STATLIB_FIRST_LINE_VALUES] for row in records]
    second = [row[_STATLIB_FIRST_LINE_VALUES:] for row in records]

    def widths(lines: list[list[str]]) -> list[int]:
        return [max(len(tok) for tok in column) for column in zip(*lines)]

    w1, w2 = widths(first), widths(second)
    out = io.StringIO()
    out.write(_STATLIB_HEADER)
    for a, b in zip(first, second):
        # Leading space and right-aligned columns, as in the StatLib file.
        out.write(" " + "  ".join(tok.rjust(w) for tok, w in zip(a, w1)) + "\n")
        out.write(" " + "  ".join(tok.rjust(w) for tok, w in zip(b, w2)) + "\n")
    return out.getvalue()


def parse_boston_statlib(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse StatLib's Boston layout exactly as the exercise notebook does; returns ``(X, y)``."""
    import pandas as pd  # imported here: the grading run should not pay for it before its notebooks start

    raw = pd.read_csv(io.StringIO(text), sep=r"\s+", skiprows=STATLIB_HEADER_LINES, header=None)
    X = np.hstack([raw.values[::2, :], raw.values[1::2, :2]])
    y = raw.values[1::2, 2]
    return X.astype(np.float64, copy=False), y.astype(np.float64, copy=False)


def load_boston() -> tuple[np.ndarray, np.ndarray]:
    """Boston Housing as the student's code sees it: X (506, 13) float64, y = MEDV (506,) float64.

    Goes through the StatLib text and the notebook's parser on purpose, so that the grader's
    canonical data cannot drift from what a student's kernel computes.
    """
    return parse_boston_statlib(boston_statlib_text())


def boston_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X_train, X_test, y_train, y_test`` split as the notebook does (test_size=0.3, random_state=42)."""
    X, y = load_boston()
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=42)
    return np.asarray(X_train), np.asarray(X_test), np.asarray(y_train), np.asarray(y_test)


# --------------------------------------------------------------------------------------------
# CIFAR-10: arrays, sources, decoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CifarArrays:
    """CIFAR-10 with the shapes and dtypes of ``keras.datasets.cifar10.load_data()``.

    x_* are (N, 32, 32, 3) uint8 and y_* are (N, 1) uint8. The arrays are read-only because a
    :class:`DatasetStore` hands the same arrays to every caller.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for split in _SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
                raise ValueError(f"x_{split}: expected (N, 32, 32, 3) uint8, got {x.shape} {x.dtype}")
            if y.dtype != np.uint8 or y.shape != (x.shape[0], 1):
                raise ValueError(f"y_{split}: expected ({x.shape[0]}, 1) uint8, got {y.shape} {y.dtype}")
            if y.size and int(y.max()) >= len(CIFAR10_CLASSES):
                raise ValueError(f"y_{split}: labels must be 0-9, found {int(y.max())}")
            x.setflags(write=False)
            y.setflags(write=False)


CifarSourceKind = Literal["smoke-npz", "official-archive", "batches-dir", "jpeg-archive"]


@dataclass(frozen=True)
class CifarSource:
    """Where a profile's CIFAR-10 comes from, and the sha256 of the bytes that define it."""

    kind: CifarSourceKind
    path: Path
    sha256: str


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    # formats= keeps Pillow from trying every decoder it has on bytes that are not a JPEG.
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
        # Checked before decoding, so an oversized image is refused without being expanded.
        if image.size != (32, 32):
            raise ValueError(f"{where}: expected a 32x32 image, got {image.size[0]}x{image.size[1]}")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _decode_jpegs(blobs: Sequence[bytes], where: Sequence[str]) -> np.ndarray:
    out = np.empty((len(blobs), 32, 32, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        out[i] = _decode_jpeg(blob, where[i])
    return out


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR-10 batches that can build numpy arrays and nothing else.

    The archive's hash is checked before this runs; the allow-list is for extracted folders (which
    cannot be hash-checked as a whole) and as a second line of defence: a pickle that names any
    other global is refused instead of executed.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # pickles written by numpy 1.x (the official ones)
            ("numpy._core.multiarray", "_reconstruct"),  # pickles written by numpy 2.x
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        if name == "_reconstruct":
            # Taken from ndarray's own pickling so it is right for whichever numpy is installed,
            # without importing numpy's private module path.
            return np.empty(0).__reduce__()[0]
        return getattr(np, name)


def _parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch -> (x (N, 32, 32, 3) uint8, y (N,) uint8), as Keras' ``load_batch`` does."""
    # encoding="bytes": the batches were pickled by Python 2; their str objects are raw bytes.
    batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{where}: not a CIFAR-10 batch (no b'data' / b'labels')")
    pixels = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: expected uint8 data of shape (N, 3072), got {pixels.shape} {pixels.dtype}")
    if labels.shape != (pixels.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{where}: expected {pixels.shape[0]} labels in 0-9")
    # The batches store channels first; Keras serves channels last.
    x = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels.astype(np.uint8)


def _arrays_from_batches(read: Mapping[str, bytes], where: str) -> CifarArrays:
    parts = {name: _parse_batch(read[name], f"{where}/{name}") for name in OFFICIAL_BATCH_NAMES}
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    x_test, y_test = parts["test_batch"]
    return CifarArrays(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]).reshape(-1, 1),
        x_test=x_test,
        y_test=y_test.reshape(-1, 1),
    )


def _load_official_archive(path: Path) -> CifarArrays:
    """Read the batches from ``cifar-10-python.tar.gz`` in memory (never extracted to disk)."""
    read: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            folder, _, base = name.rpartition("/")
            if member.isfile() and folder == "cifar-10-batches-py" and base in OFFICIAL_BATCH_NAMES:
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have contents
                read[base] = handle.read()
    missing = [name for name in OFFICIAL_BATCH_NAMES if name not in read]
    if missing:
        raise ValueError(f"{path}: missing cifar-10-batches-py/{', '.join(missing)}")
    return _arrays_from_batches(read, str(path))


def _load_batches_dir(folder: Path) -> CifarArrays:
    return _arrays_from_batches({name: (folder / name).read_bytes() for name in OFFICIAL_BATCH_NAMES}, str(folder))


@dataclass(frozen=True)
class _JpegEntry:
    name: str  # path inside the archive, without the leading "./"
    label: int
    data: bytes


def _read_jpeg_archive(path: Path) -> dict[str, list[_JpegEntry]]:
    """All images of ``cifar10-jpeg.tar.gz`` per split, sorted by name (i.e. by class, then number)."""
    splits: dict[str, list[_JpegEntry]] = {split: [] for split in _SPLITS}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isdir():
                continue
            name = member.name.removeprefix("./")
            match = _JPEG_MEMBER.fullmatch(name)
            # Only regular files are read, never links: the archive is read, not extracted.
            if not member.isfile() or match is None or match.group(2) not in CIFAR10_CLASSES:
                raise ValueError(
                    f"{path}: unexpected member {member.name!r}; expected "
                    "cifar10-jpeg/{train,test}/<class>/NNNN.jpg with classes " + ", ".join(CIFAR10_CLASSES)
                )
            handle = tar.extractfile(member)
            assert handle is not None
            split, cls = match.group(1), match.group(2)
            splits[split].append(_JpegEntry(name, CIFAR10_CLASSES.index(cls), handle.read()))
    for entries in splits.values():
        entries.sort(key=lambda e: e.name)
    return splits


def _load_jpeg_archive(path: Path) -> CifarArrays:
    """Decode the whole JPEG copy; each split shuffled with :data:`SEED` (the archive is grouped by class)."""
    splits = _read_jpeg_archive(path)
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for split in _SPLITS:
        entries = splits[split]
        if not entries:
            raise ValueError(f"{path}: no images under cifar10-jpeg/{split}/")
        order = rng.permutation(len(entries))
        chosen = [entries[i] for i in order]
        arrays[f"x_{split}"] = _decode_jpegs([e.data for e in chosen], [f"{path}:{e.name}" for e in chosen])
        arrays[f"y_{split}"] = np.array([e.label for e in chosen], dtype=np.uint8).reshape(-1, 1)
    return CifarArrays(**arrays)


# --------------------------------------------------------------------------------------------
# The smoke subset shipped in grader/data
# --------------------------------------------------------------------------------------------


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, but byte-for-byte reproducible, and written atomically.

    ``np.savez`` stamps each member with the current time, so rebuilding the shipped file would
    change its sha256 even when its contents are the same.
    """

    def write(fh: IO[bytes]) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, array in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)

    write_atomic(path, write)


def _pack(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def build_smoke(source: Path, out: Path) -> dict[str, Any]:
    """Draw the stratified smoke subset from ``cifar10-jpeg.tar.gz`` and write it to ``out`` (.npz).

    Per split, per class in label order: ``rng.choice`` (without replacement) over that class's
    images sorted by name; then ``rng.permutation`` of the split, so it is not grouped by class.
    One ``default_rng(SEED)`` serves both splits, train first. The JPEG bytes are stored unchanged.
    Returns a summary (counts, sizes, hashes) for the provenance record.
    """
    source_sha256 = _sha256_file(source)
    splits = _read_jpeg_archive(source)
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", SMOKE_TRAIN_PER_CLASS), ("test", SMOKE_TEST_PER_CLASS)):
        picked: list[_JpegEntry] = []
        for label in range(len(CIFAR10_CLASSES)):
            of_class = [e for e in splits[split] if e.label == label]
            if len(of_class) < per_class:
                raise ValueError(
                    f"{source}: {split}/{CIFAR10_CLASSES[label]} has {len(of_class)} images, need {per_class}"
                )
            picked.extend(of_class[i] for i in sorted(rng.choice(len(of_class), size=per_class, replace=False)))
        picked = [picked[i] for i in rng.permutation(len(picked))]
        arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = _pack([e.data for e in picked])
        arrays[f"{split}_labels"] = np.array([e.label for e in picked], dtype=np.uint8)
        arrays[f"{split}_names"] = np.array([e.name for e in picked], dtype=np.str_)
    arrays["classes"] = np.array(CIFAR10_CLASSES, dtype=np.str_)
    arrays["seed"] = np.array(SEED, dtype=np.int64)
    arrays["source_sha256"] = np.array(source_sha256, dtype=np.str_)
    _write_npz(out, arrays)
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "sha256": _sha256_file(out),
        "source_sha256": source_sha256,
        "train": int(arrays["train_labels"].size),
        "test": int(arrays["test_labels"].size),
    }


def _load_smoke(path: Path) -> CifarArrays:
    with np.load(path, allow_pickle=False) as npz:
        arrays: dict[str, np.ndarray] = {}
        for split in _SPLITS:
            blob, offsets = npz[f"{split}_jpeg"], npz[f"{split}_offsets"]
            labels = npz[f"{split}_labels"]
            if offsets.shape != (labels.size + 1,) or offsets[0] != 0 or offsets[-1] != blob.size:
                raise ValueError(f"{path}: {split}_offsets do not match {split}_jpeg / {split}_labels")
            data = blob.tobytes()
            blobs = [data[offsets[i] : offsets[i + 1]] for i in range(labels.size)]
            arrays[f"x_{split}"] = _decode_jpegs(blobs, [f"{path}:{split}[{i}]" for i in range(labels.size)])
            arrays[f"y_{split}"] = labels.astype(np.uint8).reshape(-1, 1)
    return CifarArrays(**arrays)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


def _default_keras_home() -> Path:
    # Same rule as Keras' own cache: $KERAS_HOME, else ~/.keras.
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


class DatasetStore:
    """The datasets served for one grading profile, and the cache directory they are written to.

    ``profile`` is "smoke" (the subset shipped in ``grader/data``) or "full" (CIFAR-10 found in
    ``data_dir`` or the Keras cache). Sources are looked up lazily, on the first call that needs
    them, and decoded arrays are kept in the instance; nothing is shared between instances.
    ``keras_home`` defaults to ``$KERAS_HOME`` or ``~/.keras``, read when the store is made.
    """

    def __init__(
        self,
        profile: str,
        cache_dir: Path,
        data_dir: Path | None = None,
        *,
        keras_home: Path | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"--profile must be one of {', '.join(PROFILES)}; got {profile!r}")
        self.profile = profile
        self.cache_dir = Path(cache_dir)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.keras_home = Path(keras_home) if keras_home is not None else _default_keras_home()

    def __repr__(self) -> str:
        return (
            f"DatasetStore(profile={self.profile!r}, cache_dir={self.cache_dir!r}, "
            f"data_dir={self.data_dir!r}, keras_home={self.keras_home!r})"
        )

    # -- sources ---------------------------------------------------------------------------

    def _full_candidates(self) -> list[tuple[CifarSourceKind, Path]]:
        candidates: list[tuple[CifarSourceKind, Path]] = []
        if self.data_dir is not None:
            candidates += [
                ("official-archive", self.data_dir / "cifar-10-python.tar.gz"),
                ("batches-dir", self.data_dir / "cifar-10-batches-py"),
                ("jpeg-archive", self.data_dir / "cifar10-jpeg.tar.gz"),
            ]
        keras_datasets = self.keras_home / "datasets"
        candidates += [
            # Keras 3 (TensorFlow 2.16+) extracts into <fname>/ and keeps the archive as <fname>_archive.
            ("batches-dir", keras_datasets / "cifar-10-batches-py-target" / "cifar-10-batches-py"),
            # Keras 2 / tf.keras before 2.16.
            ("batches-dir", keras_datasets / "cifar-10-batches-py"),
            ("official-archive", keras_datasets / "cifar-10-batches-py-target_archive"),
            ("official-archive", keras_datasets / "cifar-10-batches-py.tar.gz"),
        ]
        return candidates

    @cached_property
    def cifar10_source(self) -> CifarSource:
        """The CIFAR-10 source this store serves (found, and hash-checked where there is a known hash)."""
        if self.profile in ("smoke", "tiny"):
            if not SMOKE_NPZ.is_file():
                raise FileNotFoundError(
                    f"the smoke subset {SMOKE_NPZ} is missing; rebuild it with "
                    "`python -m grader.datasets build-smoke` (see grader/data/README.md)"
                )
            return CifarSource("smoke-npz", SMOKE_NPZ, _sha256_file(SMOKE_NPZ))

        looked: list[str] = [] if self.data_dir is not None else ["--data-dir (not given)"]
        for kind, path in self._full_candidates():
            if kind == "batches-dir":
                missing = [name for name in OFFICIAL_BATCH_NAMES if not (path / name).is_file()]
                if not path.is_dir():
                    looked.append(f"{path}/ (not found)")
                elif missing:
                    looked.append(f"{path}/ (incomplete: no {', '.join(missing)})")
                else:
                    return CifarSource(kind, path, self._hash_batches_dir(path))
            elif not path.is_file():
                looked.append(f"{path} (not found)")
            else:
                digest = _sha256_file(path)
                if kind == "official-archive" and digest != OFFICIAL_CIFAR10_SHA256:
                    # Refused rather than skipped: the instructor put it there, and it holds
                    # pickles, which are only unpickled from the archive whose hash is known.
                    raise ValueError(
                        f"{path} is not the official CIFAR-10 archive: sha256 {digest}, expected "
                        f"{OFFICIAL_CIFAR10_SHA256}. Replace it with the official cifar-10-python.tar.gz, "
                        "or, if it is the JPEG copy, name it cifar10-jpeg.tar.gz."
                    )
                return CifarSource(kind, path, digest)
        places = "\n".join(f"  - {place}" for place in looked)
        raise FileNotFoundError(
            "CIFAR-10 for --profile full was not found. Looked, in order, in:\n"
            f"{places}\n"
            "Provide it with --data-dir DIR, where DIR holds the official cifar-10-python.tar.gz "
            f"(sha256 {OFFICIAL_CIFAR10_SHA256}) or cifar10-jpeg.tar.gz "
            "(cifar10-jpeg/{train,test}/<class>/NNNN.jpg); or use --profile smoke."
        )

    @staticmethod
    def _hash_batches_dir(folder: Path) -> str:
        # An extracted folder has no single file to hash; hash each batch under its name.
        digest = hashlib.sha256()
        for name in OFFICIAL_BATCH_NAMES:
            digest.update(f"{name}\0{_sha256_file(folder / name)}\n".encode())
        return digest.hexdigest()

    @cached_property
    def fingerprint(self) -> str:
        """sha256 identifying the data served: format version, profile and the sources' bytes.

        Computed from file hashes only (no decoding), so it is cheap enough to key caches on.
        """
        identity = {"format_version": FORMAT_VERSION, "profile": self.profile, **self.sources}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    @cached_property
    def sources(self) -> dict[str, Any]:
        """The bytes the served data is made from (kind and sha256 of each source): what a reference
        baseline records, so that tolerances are only applied to the data they were measured on."""
        source = self.cifar10_source
        return {"cifar10": {"kind": source.kind, "sha256": source.sha256}, "boston_csv_sha256": _sha256_file(BOSTON_CSV)}

    # -- data ------------------------------------------------------------------------------

    @cached_property
    def _cifar10(self) -> CifarArrays:
        source = self.cifar10_source
        if source.kind == "smoke-npz":
            smoke = _load_smoke(source.path)
            if self.profile != "tiny":
                return smoke
            n, m = TINY_SIZES["train"], TINY_SIZES["test"]
            return CifarArrays(smoke.x_train[:n], smoke.y_train[:n], smoke.x_test[:m], smoke.y_test[:m])
        if source.kind == "official-archive":
            return _load_official_archive(source.path)
        if source.kind == "batches-dir":
            return _load_batches_dir(source.path)
        return _load_jpeg_archive(source.path)

    def cifar10(self) -> CifarArrays:
        """CIFAR-10 for this profile, shaped like ``keras.datasets.cifar10.load_data()``."""
        return self._cifar10

    def materialize(self) -> Path:
        """Write the files the student's kernel is served, once per fingerprint; return their folder.

        The folder ``cache_dir / f"{profile}-{fingerprint[:16]}"`` appears complete or not at all
        (written beside it, then renamed), so concurrent graders never see a half-written one; a
        later call finds it and writes nothing.
        """
        final = self.cache_dir / f"{self.profile}-{self.fingerprint[:16]}"
        if (final / "manifest.json").is_file():
            return final
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=self.cache_dir))
        try:
            self._write_served_files(tmp)
            # mkdtemp makes the folder private; the kernel may run as another user.
            tmp.chmod(0o755)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process renamed its copy first; theirs is as good as ours.
                if (final / "manifest.json").is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _write_served_files(self, folder: Path) -> None:
        data = self.cifar10()
        files: dict[str, dict[str, Any]] = {}
        arrays = {
            "cifar10_x_train.npy": data.x_train,
            "cifar10_y_train.npy": data.y_train,
            "cifar10_x_test.npy": data.x_test,
            "cifar10_y_test.npy": data.y_test,
        }
        for name, array in arrays.items():
            np.save(folder / name, array, allow_pickle=False)
            files[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        (folder / "boston.txt").write_text(boston_statlib_text(), encoding="ascii", newline="\n")
        files["boston.txt"] = {"shape": None, "dtype": None}
        for name, entry in files.items():
            entry["bytes"] = (folder / name).stat().st_size
            entry["sha256"] = _sha256_file(folder / name)
        source = self.cifar10_source
        manifest = {
            "format_version": FORMAT_VERSION,
            "profile": self.profile,
            "fingerprint": self.fingerprint,
            # No local paths: the folder is shared by every store with the same fingerprint.
            "sources": {
                "cifar10": {"kind": source.kind, "sha256": source.sha256},
                "boston_csv_sha256": _sha256_file(BOSTON_CSV),
            },
            "files": files,
        }
        # Written last: its presence is what marks the folder complete.
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def served_cifar10(folder: Path) -> CifarArrays:
    """CIFAR-10 as ``DatasetStore.materialize`` wrote it into ``folder`` (plain arrays, no pickles)."""

    def load(name: str) -> np.ndarray:
        return np.asarray(np.load(folder / f"cifar10_{name}.npy", allow_pickle=False))

    return CifarArrays(load("x_train"), load("y_train"), load("x_test"), load("y_test"))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    """Entry point of ``python -m grader.datasets``."""
    parser = argparse.ArgumentParser(prog="python -m grader.datasets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-smoke", help="draw the CIFAR-10 smoke subset from the JPEG copy")
    build.add_argument("--source", type=Path, required=True, help="cifar10-jpeg.tar.gz")
    build.add_argument("--out", type=Path, default=SMOKE_NPZ, help=f"output .npz (default: {SMOKE_NPZ})")

    serve = commands.add_parser("materialize", help="write the files served to student kernels; print their folder")
    serve.add_argument("--profile", choices=PROFILES, default="smoke")
    serve.add_argument("--cache-dir", type=Path, required=True)
    serve.add_argument("--data-dir", type=Path, default=None)

    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "build-smoke":
            print(json.dumps(build_smoke(args.source, args.out), indent=2))
        else:
            print(DatasetStore(args.profile, args.cache_dir, args.data_dir).materialize())
    except (FileNotFoundError, ValueError) as exc:
        # These messages already say what was wrong and what to do; a traceback would bury them.
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
