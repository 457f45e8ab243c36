"""The grader's offline dataset store: Boston Housing as StatLib serves it, CIFAR-10 as Keras loads it.

Grading runs without network access, so every dataset a student notebook asks for is produced here
from files shipped in ``grader/data`` (the "smoke" and "tiny" profiles) or supplied by the instructor
(the "full" profile), and written once per data version into a cache directory the kernel reads from.

- ``store``: ``DatasetStore`` (a profile's sources, fingerprint and served files) and ``served_cifar10``;
- ``boston``: Boston Housing, rebuilt in StatLib's layout from the shipped CSV and parsed as the notebook does;
- ``cifar``: CIFAR-10's arrays and the sources they are read from (official archive, batches, JPEG copy);
- ``subsets``: the smoke subset shipped in ``grader/data`` (and how it is built) and the tiny prefix of it;
- ``files``: where the shipped data is, and file hashing;
- ``__main__``: the command line (``build-smoke``, ``materialize``).

Command line (run from the project root)::

    python -m grader.datasets build-smoke --source PATH/cifar10-jpeg.tar.gz --out grader/data/cifar10-smoke.npz
    python -m grader.datasets materialize --profile smoke --cache-dir DIR [--data-dir DIR]
"""

from __future__ import annotations

from grader.datasets.boston import BOSTON_COLUMNS, boston_split, boston_statlib_text, load_boston, parse_boston_statlib
from grader.datasets.boston import BOSTON_CSV as BOSTON_CSV
from grader.datasets.cifar import CIFAR10_CLASSES, OFFICIAL_CIFAR10_SHA256, SEED, CifarArrays, CifarSource
from grader.datasets.files import _sha256_file as _sha256_file
from grader.datasets.store import FORMAT_VERSION, PROFILES, DatasetStore
from grader.datasets.store import served_cifar10 as served_cifar10
from grader.datasets.subsets import SMOKE_NPZ as SMOKE_NPZ
from grader.datasets.subsets import build_smoke

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
