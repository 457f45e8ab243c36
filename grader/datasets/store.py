"""The dataset store: the data served for one profile, found and hash-checked, with its fingerprint, and
the folder of files written once per fingerprint into a cache directory for the student's kernel."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from grader.datasets.boston import BOSTON_CSV, boston_statlib_text
from grader.datasets.cifar import (
    OFFICIAL_BATCH_NAMES,
    OFFICIAL_CIFAR10_SHA256,
    CifarArrays,
    CifarSource,
    CifarSourceKind,
    _load_batches_dir,
    _load_jpeg_archive,
    _load_official_archive,
)
from grader.datasets.files import _sha256_file
from grader.datasets.subsets import SMOKE_NPZ, TINY_SIZES, _load_smoke

PROFILES = ("smoke", "full", "tiny")  # the dataset profiles this module serves (--profile)

# Bump whenever the bytes served for the same source change (decoding, ordering, file layout), so
# caches written by an older grader are not reused.
FORMAT_VERSION = 1


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
