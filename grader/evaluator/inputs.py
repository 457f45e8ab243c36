"""The canonical inputs the evaluator predicts on, prepared as each model's training data was.

Runs in the orchestrator: it writes the inputs into the job's ``eval-inputs/`` folder (hidden from
the runner, readable by the evaluator) and names them in each request's ``input``. Never the labels:
the orchestrator scores the predictions itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from grader.judging import provenance
from grader.runner.files import JobFiles

TRAIN_PROBE_ROWS = 1000  # canonical training rows each CIFAR-10 model also predicts on (integrity.no_test_leakage)


class CanonicalInputs:
    """A run's canonical test inputs: the served data (``data_dir``) and the canonical arrays
    (``canonicals``, computed on first use)."""

    def __init__(self, data_dir: Path, canonicals: Callable[[], dict[str, provenance.Canonical]]) -> None:
        self.data_dir = data_dir
        self._canonicals = canonicals

    def path(self, job_dir: Path, dataset: str, mode: str = "channel", split: str = "test") -> Path:
        """The canonical test inputs the evaluator predicts on (never the labels), prepared by ``mode``
        (per-image or per-pixel standardisation, mean-image subtraction) before its per-channel affine map.
        ``split="train"``: the first ``TRAIN_PROBE_ROWS`` training rows instead, prepared the same way."""
        if dataset == "cifar10" and mode == "channel" and split == "test":
            return self.data_dir / "cifar10_x_test.npy"
        stem = dataset if mode == "channel" else f"{dataset}_{mode}"
        path = JobFiles(job_dir).eval_inputs / (f"{stem}_x_test.npy" if split == "test" else f"{stem}_x_train_probe.npy")
        if not path.exists():  # written once, whole: the evaluator may be reading it already
            path.parent.mkdir(parents=True, exist_ok=True)
            canon = self._canonicals()[dataset]
            source = canon.x_test if split == "test" else canon.x_train[:TRAIN_PROBE_ROWS]
            rows = canon.base_transform(source, mode)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, rows.reshape(len(rows), *canon.sample_shape), allow_pickle=False)
            tmp.replace(path)
        return path

    def spec(self, job_dir: Path, match: provenance.DataMatch) -> dict[str, Any] | None:
        """The canonical test inputs a model is asked to predict on, scaled as the student scaled theirs."""
        if not match.verified:
            return None
        spec = {
            "x_file": str(self.path(job_dir, match.dataset, match.mode)),
            "channels": match.channels,
            "scale": match.scale,
            "shift": match.shift,
            "sample_shape": match.sample_shape,
        }
        if match.dataset == "cifar10":
            spec["train_x_file"] = str(self.path(job_dir, match.dataset, match.mode, split="train"))
        return spec
