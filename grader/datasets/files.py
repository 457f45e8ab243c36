"""Where the data files shipped with the grader are (``grader/data``), and how the store hashes files."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Located from this file, never from the working directory, so the store works wherever the
# grader is run from. These are paths, not state: nothing here is ever reassigned.
PACKAGE_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
