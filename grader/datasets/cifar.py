"""CIFAR-10 as ``keras.datasets.cifar10.load_data()`` returns it, read from each source the store accepts:
the official archive or its extracted batches (pickles, unpickled with an allow-list) and the JPEG copy."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

# One seed for every random choice the store makes (the smoke subset, the shuffling of the JPEG copy),
# so the shipped subset can be rebuilt bit for bit and the full JPEG profile is the same on every machine.
SEED = 20261128

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

# Inside cifar10-jpeg.tar.gz; "./" prefixes are stripped first, for archives re-made with `tar -C`.
_JPEG_MEMBER = re.compile(r"cifar10-jpeg/(train|test)/([a-z]+)/(\d+)\.jpe?g")

_SPLITS = ("train", "test")


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
