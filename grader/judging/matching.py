"""Recorded arrays matched against the canonical data (``provenance.py``), and what the matches say
about a training run: how its test inputs are to be prepared, and how many test rows it saw.

Matches are cached by what they are computed from (the recorded fingerprint and the bytes of its
samples file as they are when matched), so the matches made while a notebook runs are reused by the
final assembly only where the files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from grader.judging import provenance
from grader.records import ArrayFingerprint, EvaluateRecord, FitRecord, to_jsonable
from grader.runner.files import JobFiles

MATCH_CACHE_SIZE = 256  # provenance matches kept (a notebook has a handful; a batch worker's are dropped in bulk)


class Matches:
    """Provenance matches of a run's recorded arrays, cached by what they are computed from.

    ``canonicals`` gives the canonical data, computed on first use.
    """

    def __init__(self, canonicals: Callable[[], dict[str, provenance.Canonical]]) -> None:
        self._canonicals = canonicals
        self._cache: dict[tuple[str, str], provenance.DataMatch] = {}

    @property
    def canonicals(self) -> dict[str, provenance.Canonical]:
        return self._canonicals()

    def match(self, job_dir: Path, fp: ArrayFingerprint) -> provenance.DataMatch:
        """How a recorded array relates to the canonical data; a pure function of the fingerprint and
        the samples file's bytes as they are now, so a match computed earlier from the same inputs is reused."""
        samples = JobFiles(job_dir).samples(fp)
        key = (
            json.dumps(to_jsonable(fp), sort_keys=True),
            "" if samples is None else hashlib.sha256(np.ascontiguousarray(samples).data).hexdigest() + repr(samples.shape),
        )
        match = self._cache.get(key)
        if match is None:
            match = provenance.identify_any(fp, samples, list(self.canonicals.values()))
            if len(self._cache) >= MATCH_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = match
        return match

    def preparation(self, job_dir: Path, fit: FitRecord, evals: list[EvaluateRecord]) -> tuple[provenance.DataMatch, str]:
        """How to prepare the canonical test inputs for a model, and from which of its data that was learnt.

        Its training data's preparation when those rows are verified; otherwise (training data augmented
        beyond recognition, or not recorded) that of its validation data, then of the data the notebook
        evaluated it on: rows that are verified as the canonical data prepared one way, never augmented.
        """
        train = self.match(job_dir, fit.x)
        if train.verified:
            return train, "training data"
        candidates = [("its validation data", fit.validation_x)] + [
            (f"the data of its evaluate call {e.index}", e.x) for e in evals if e.model_key == fit.model_key
        ]
        for origin, fp in candidates:
            if fp.kind != "array":
                continue
            other = self.match(job_dir, fp)
            if other.verified and other.dataset == train.dataset:
                return other, origin
        # Last, the arrays its batches were drawn from, when the batches have their distribution (an
        # ImageDataGenerator that augments without rescaling, a tf.data pipeline that only shuffles and
        # flips): a generator that rescales or standardises changes it, and is not taken for one that does not.
        for source in fit.x_sources:
            other = self.match(job_dir, source)
            if other.verified and other.dataset == train.dataset and same_distribution(fit.x, source):
                return other, "the arrays its batches were drawn from"
        return train, "training data"

    def drawn_from_verified(self, job_dir: Path, fit: FitRecord, match: provenance.DataMatch) -> bool:
        """Whether the arrays a stream's batches were drawn from are verified rows of the same dataset."""
        return any(
            m.verified and m.dataset == match.dataset for m in (self.match(job_dir, s) for s in fit.x_sources)
        )

    def leaked_rows(self, job_dir: Path, fit: FitRecord, matches: dict[int, provenance.DataMatch]) -> int:
        """Distinct test rows a training run saw: in the rows it was fed, or in the arrays its stream drew
        them from (which augmentation cannot disguise)."""
        fed = (matches.get(fit.index) or self.match(job_dir, fit.x)).distinct_test_rows
        drawn = 0
        for source in fit.x_sources:
            match = self.match(job_dir, source)
            drawn += match.distinct_test_rows if match.verified else 0
        return max(fed, drawn)


def same_distribution(a: ArrayFingerprint, b: ArrayFingerprint, tolerance: float = 0.15) -> bool:
    """Whether two recorded arrays have per-channel means and spreads within ``tolerance`` spreads of each other."""
    if not a.channels or len(a.channels) != len(b.channels):
        return False
    for x, y in zip(a.channels, b.channels):
        spread = max(y.std, 1e-12)
        if abs(x.mean - y.mean) > tolerance * spread or abs(x.std - y.std) > tolerance * spread:
            return False
    return True
