"""Which canonical data a model was fit (or evaluated) on, and how the student scaled it.

The kernel records, for every array passed to ``fit``/``evaluate``, per-channel statistics and the
values of every row at a few fixed positions (see ``grader.bootstrap.fingerprint_array``). Here those
records are matched against the canonical datasets: the per-channel affine map ``student = scale *
canonical + shift`` is estimated (it covers raw data, ``/255``, standardisation, min-max scaling),
each row is mapped back and looked up among the canonical train and test rows. The match is
*verified* when nearly every row is found; only then is the scaling reused to recompute metrics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from grader.bootstrap import sample_positions
from grader.records import ArrayFingerprint

VERIFIED_FRACTION = 0.9
ROUGH_TOLERANCE = 0.25  # RMS distance in canonical standard deviations, first pass
STRICT_TOLERANCE = 0.02  # after refining the scaling on matched rows


@dataclasses.dataclass(frozen=True)
class Canonical:
    """A canonical dataset, flattened per row, with the samples the kernel would have recorded."""

    name: str
    sample_shape: tuple[int, ...]
    channels: int
    x_train: np.ndarray  # (n, width) float64
    x_test: np.ndarray
    y_train: np.ndarray  # (n,)
    y_test: np.ndarray
    integer_valued: bool

    @property
    def width(self) -> int:
        return int(np.prod(self.sample_shape))

    def positions(self) -> list[int]:
        return sample_positions(self.width)

    def channel_of(self, positions: Sequence[int]) -> np.ndarray:
        return np.asarray(positions) % self.channels

    # What matching needs of the canonical data alone, derived once per dataset and reused for every
    # recorded array (over the whole CIFAR-10 training set these reductions cost seconds each time).

    @functools.cached_property
    def train_channel_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per channel mean, std (zeros replaced by 1), min and max of the training rows."""
        c = self.channels
        ref = self.x_train.reshape(-1, c) if self.width % c == 0 else self.x_train.reshape(-1, 1)
        std = ref.std(axis=0)
        return ref.mean(axis=0), np.where(std > 0, std, 1.0), ref.min(axis=0), ref.max(axis=0)

    @functools.cached_property
    def pool(self) -> tuple[np.ndarray, np.ndarray]:
        """Training then test rows at the sampled positions, and their per-position spread."""
        positions = self.positions()
        pool = np.concatenate([self.x_train[:, positions], self.x_test[:, positions]])
        spread = pool.std(axis=0)
        return pool, np.where(spread > 0, spread, 1.0)

    @functools.cached_property
    def neighbours(self) -> Any:
        """A nearest-neighbour index over the pool, in units of its spread."""
        from sklearn.neighbors import NearestNeighbors

        pool, spread = self.pool
        return NearestNeighbors(n_neighbors=1).fit(pool / spread)

    @functools.cached_property
    def integer_lookup(self) -> dict[bytes, int]:
        """Pool row bytes (int16) -> pool index, for exact matching of integer pixel values."""
        return {row.tobytes(): i for i, row in enumerate(self.pool[0].astype(np.int16))}


def make_canonical(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    channels: int,
) -> Canonical:
    return Canonical(
        name=name,
        sample_shape=tuple(int(s) for s in x_train.shape[1:]),
        channels=channels,
        x_train=x_train.reshape(len(x_train), -1).astype(np.float64),
        x_test=x_test.reshape(len(x_test), -1).astype(np.float64),
        y_train=np.asarray(y_train).reshape(-1),
        y_test=np.asarray(y_test).reshape(-1),
        integer_valued=bool(np.issubdtype(x_train.dtype, np.integer)),
    )


@dataclasses.dataclass(frozen=True)
class DataMatch:
    """How an array recorded in the kernel relates to a canonical dataset."""

    dataset: str  # the canonical dataset's name, or "unknown"
    verified: bool
    scale: list[float]
    shift: list[float]
    channels: int
    sample_shape: list[int]
    rows: int
    matched_rows: int
    train_rows: list[int]  # canonical indices matched, in the order of the recorded rows (-1: none)
    test_rows: list[int]
    note: str

    @property
    def distinct_test_rows(self) -> int:
        return len({i for i in self.test_rows if i >= 0})

    @property
    def distinct_train_rows(self) -> int:
        return len({i for i in self.train_rows if i >= 0})


def unknown(note: str, rows: int = 0) -> DataMatch:
    return DataMatch("unknown", False, [], [], 0, [], rows, 0, [], [], note)


def _student_channel_stats(fp: ArrayFingerprint, canon: Canonical) -> tuple[np.ndarray, np.ndarray] | None:
    """Per canonical channel mean and std of the student's array, pooled from the recorded columns."""
    cols = len(fp.channels)
    if cols == 0 or cols % canon.channels != 0:
        return None
    means = np.array([c.mean for c in fp.channels])
    sqs = np.array([c.std**2 + c.mean**2 for c in fp.channels])
    idx = np.arange(cols) % canon.channels
    mean = np.array([means[idx == c].mean() for c in range(canon.channels)])
    sq = np.array([sqs[idx == c].mean() for c in range(canon.channels)])
    return mean, np.sqrt(np.maximum(sq - mean**2, 0.0))


def _candidates(fp: ArrayFingerprint, canon: Canonical) -> list[tuple[np.ndarray, np.ndarray]]:
    c = canon.channels
    ref_mean, ref_std, ref_min, ref_max = canon.train_channel_stats
    out = [(np.ones(c), np.zeros(c))]
    # Scalers fit on the canonical training split, as students fit them: exact for X_test and subsets too.
    out.append((1 / ref_std, -ref_mean / ref_std))
    span = np.where(ref_max > ref_min, ref_max - ref_min, 1.0)
    out.append((1 / span, -ref_min / span))
    stats = _student_channel_stats(fp, canon)
    if stats is not None:
        mean, std = stats
        scale = np.where(std > 0, std / ref_std, 1.0)
        out.append((scale, mean - scale * ref_mean))
    if canon.integer_valued:
        out.append((np.full(c, 1 / 255), np.zeros(c)))
        out.append((np.full(c, 1 / 127.5), np.full(c, -1.0)))
    return out


def _nearest(query: np.ndarray, canon: Canonical) -> tuple[np.ndarray, np.ndarray]:
    """Index of, and RMS distance (in units of the pool's spread) to, each query row's nearest pool row."""
    pool, spread = canon.pool
    dist, idx = canon.neighbours.kneighbors(query / spread)
    return idx[:, 0], dist[:, 0] / np.sqrt(pool.shape[1])


def identify(fp: ArrayFingerprint, samples: np.ndarray | None, canon: Canonical) -> DataMatch:
    """Match a recorded array against one canonical dataset."""
    if fp.kind != "array" or not fp.shape:
        return unknown(f"the data was not an array ({fp.kind}{': ' + fp.note if fp.note else ''})")
    rows = int(fp.shape[0])
    width = int(np.prod(fp.shape[1:])) if len(fp.shape) > 1 else 1
    if width != canon.width:
        return unknown(f"rows of {width} values, not the {canon.width} of {canon.name}", rows)
    if samples is None or samples.ndim != 2 or samples.shape[0] != rows:
        return unknown("the recorded row samples are missing or malformed", rows)
    positions = canon.positions()
    if list(fp.sample_positions) != positions or samples.shape[1] != len(positions):
        return unknown("the recorded row samples were taken at other positions", rows)
    ch = canon.channel_of(positions)
    pool = canon.pool[0]
    n_train = len(canon.x_train)
    probe_idx = np.linspace(0, rows - 1, num=min(rows, 400)).astype(int)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for scale, shift in _candidates(fp, canon):
        if np.any(scale[ch] == 0):
            continue
        back = (samples[probe_idx] - shift[ch]) / scale[ch]
        _, dist = _nearest(back, canon)
        hit = float((dist < ROUGH_TOLERANCE).mean())
        if best is None or hit > best[0]:
            best = (hit, scale, shift)
    if best is None or best[0] < 0.5:
        return unknown(f"fewer than half of the rows could be matched to {canon.name} under any simple scaling", rows)
    _, scale, shift = best
    # Refine the per-channel scaling by least squares on matched pairs, then match every row strictly.
    back = (samples[probe_idx] - shift[ch]) / scale[ch]
    idx, dist = _nearest(back, canon)
    good = dist < ROUGH_TOLERANCE
    student_vals = samples[probe_idx][good]
    canon_vals = pool[idx[good]]
    new_scale, new_shift = scale.copy(), shift.copy()
    for c in range(canon.channels):
        mask = ch == c
        if not mask.any():
            continue
        xs = canon_vals[:, mask].reshape(-1)
        ys = student_vals[:, mask].reshape(-1)
        if xs.size >= 2 and np.ptp(xs) > 0:
            a, b = np.polyfit(xs, ys, 1)
            if a != 0:
                new_scale[c], new_shift[c] = a, b
    back_all = (samples - new_shift[ch]) / new_scale[ch]
    if canon.integer_valued:
        # Pixel values are integers: after exact rescaling, rows match byte for byte (fast for 50,000 rows).
        lookup = canon.integer_lookup
        keys = np.round(back_all).clip(-32768, 32767).astype(np.int16)
        idx_all = np.array([lookup.get(row.tobytes(), -1) for row in keys], dtype=np.int64)
        ok = idx_all >= 0
    else:
        idx_all, dist_all = _nearest(back_all, canon)
        ok = dist_all < STRICT_TOLERANCE
    train_rows = np.where(ok & (idx_all < n_train), idx_all, -1)
    test_rows = np.where(ok & (idx_all >= n_train), idx_all - n_train, -1)
    matched = int(ok.sum())
    verified = matched >= VERIFIED_FRACTION * rows
    return DataMatch(
        dataset=canon.name,
        verified=verified,
        scale=[float(v) for v in new_scale],
        shift=[float(v) for v in new_shift],
        channels=canon.channels,
        sample_shape=[int(s) for s in fp.shape[1:]],
        rows=rows,
        matched_rows=matched,
        train_rows=[int(i) for i in train_rows],
        test_rows=[int(i) for i in test_rows],
        note="" if verified else f"only {matched} of {rows} rows matched {canon.name} after rescaling",
    )


def identify_any(fp: ArrayFingerprint, samples: np.ndarray | None, canonicals: Sequence[Canonical]) -> DataMatch:
    """The best match among several canonical datasets (by row width first)."""
    best = unknown("no canonical dataset has rows of this size")
    for canon in canonicals:
        match = identify(fp, samples, canon)
        if match.dataset != "unknown" and (best.dataset == "unknown" or match.matched_rows > best.matched_rows):
            best = match
        elif best.dataset == "unknown" and match.rows and "rows of" not in match.note:
            best = dataclasses.replace(match, dataset="unknown")
    return best


def label_affine(y_samples: np.ndarray, match: DataMatch, canon: Canonical) -> tuple[float, float] | None:
    """For regression targets: ``student_y = a * canonical_y + b`` from the matched rows, if consistent."""
    ys = y_samples.reshape(len(y_samples), -1)
    if ys.shape[1] != 1:
        return None
    pairs = [
        (canon.y_train[t] if t >= 0 else canon.y_test[s], ys[i, 0])
        for i, (t, s) in enumerate(zip(match.train_rows, match.test_rows))
        if t >= 0 or s >= 0
    ]
    if len(pairs) < 3:
        return None
    c, s = np.array(pairs, dtype=np.float64).T
    if np.ptp(c) == 0:
        return None
    a, b = np.polyfit(c, s, 1)
    if not np.allclose(a * c + b, s, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(s).max()))):
        return None
    return float(a), float(b)
