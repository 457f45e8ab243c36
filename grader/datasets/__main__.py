"""Command line of the dataset store (run from the project root)::

    python -m grader.datasets build-smoke --source PATH/cifar10-jpeg.tar.gz --out grader/data/cifar10-smoke.npz
    python -m grader.datasets materialize --profile smoke --cache-dir DIR [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import grader.datasets
from grader.datasets.store import PROFILES, DatasetStore
from grader.datasets.subsets import SMOKE_NPZ, build_smoke

_DESCRIPTION = (grader.datasets.__doc__ or "").splitlines()[0]


def main(argv: Iterable[str] | None = None) -> int:
    """Entry point of ``python -m grader.datasets``."""
    parser = argparse.ArgumentParser(prog="python -m grader.datasets", description=_DESCRIPTION)
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
