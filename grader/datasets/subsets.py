"""The CIFAR-10 subsets shipped in ``grader/data``: the stratified "smoke" subset (drawn from the JPEG
copy, stored as its JPEG bytes in a reproducible .npz, decoded on load) and the "tiny" prefix of it."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from grader.datasets.cifar import (
    _SPLITS,
    CIFAR10_CLASSES,
    SEED,
    CifarArrays,
    _decode_jpegs,
    _JpegEntry,
    _read_jpeg_archive,
)
from grader.datasets.files import PACKAGE_DATA_DIR, _sha256_file
from grader.outputs import write_atomic

# "tiny" is for the grader's own tests: the first TINY_SIZES images of each smoke split. The smoke
# set is stored shuffled and stratified, so a prefix keeps the classes roughly balanced.
TINY_SIZES = {"train": 1000, "test": 200}

SMOKE_TRAIN_PER_CLASS = 500
SMOKE_TEST_PER_CLASS = 100

SMOKE_NPZ = PACKAGE_DATA_DIR / "cifar10-smoke.npz"


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
