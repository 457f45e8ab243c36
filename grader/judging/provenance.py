"""Which canonical data a model was fit (or evaluated) on, and how the student prepared it.

The kernel records, for every array (or stream of batches) a model trains on, per-channel statistics
and the values of every row at a few fixed positions (see ``grader.kernel.bootstrap``). Here those records are
matched against the canonical datasets.

First the common case, fast and exact: the per-channel affine map ``student = scale * canonical +
shift`` (raw values, ``/255``, standardisation, min-max) is estimated and every row is mapped back and
looked up. When that does not verify, image rows are looked up by a signature that no per-channel or
per-image affine map changes (each row's samples, standardised per channel within the row), among the
canonical rows as they are, mirrored left to right, and with the training set's mean image subtracted
(and divided by its per-pixel spread). The matched pairs then decide the preparation (``mode``: per
channel, per-image standardisation or min-max, mean-image subtraction, per-pixel z-scores) and its
per-channel affine part, and every row is checked against it.

A match is *verified* when nearly every row is found, or, for training data augmented on the fly
(random shifts, crops, rotations), when enough rows are found exactly and the rest have the
distribution of the prepared training set. Only a verified match's preparation is reused to
recompute metrics. Data of a canonical dataset's shape that matches no row still names that dataset
(its model's regularizers are judged), unverified.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from grader.kernel.bootstrap import sample_positions
from grader.records import ArrayFingerprint

VERIFIED_FRACTION = 0.9
ROUGH_TOLERANCE = 0.25  # RMS distance in canonical standard deviations, first pass
STRICT_TOLERANCE = 0.02  # after refining the scaling on matched rows
NEAR_DUPLICATE_TOLERANCE = 0.1  # RMS distance, in canonical spreads, of a near copy of a test row


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
    def row_stats(self) -> dict[str, np.ndarray]:
        """Each pool row's mean, standard deviation, minimum and maximum over all its values."""
        parts: dict[str, list[np.ndarray]] = {"mean": [], "std": [], "min": [], "max": []}
        for split in (self.x_train, self.x_test):  # in blocks: never a copy of the whole pool
            for start in range(0, len(split), 2048):
                block = split[start : start + 2048]
                parts["mean"].append(block.mean(axis=1))
                parts["std"].append(block.std(axis=1))
                parts["min"].append(block.min(axis=1))
                parts["max"].append(block.max(axis=1))
        return {k: np.concatenate(v) for k, v in parts.items()}

    @functools.cached_property
    def pixel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The training rows' mean and standard deviation at every position (the mean image and its spread)."""
        std = self.x_train.std(axis=0)
        return self.x_train.mean(axis=0), np.where(std > 0, std, 1.0)

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3 and self.channels == self.sample_shape[-1] and self.channels > 1

    def mirrored_positions(self) -> list[int]:
        """The sampled positions of each row mirrored left to right (images only)."""
        h, w, c = self.sample_shape
        out = []
        for p in self.positions():
            row, rest = divmod(p, w * c)
            col, ch = divmod(rest, c)
            out.append(row * w * c + (w - 1 - col) * c + ch)
        return out

    def pool_values(self, view: str) -> np.ndarray:
        """Pool rows (train then test) at the sampled positions, as ``view`` sees them (see :data:`VIEWS`);
        each view is made once, when first asked for."""
        if view not in self._views:
            positions = self.positions()
            if view == "mirrored":
                mirrored = self.mirrored_positions()
                values = np.concatenate([self.x_train[:, mirrored], self.x_test[:, mirrored]])
            elif view == "as_is":
                values = self.pool[0]
            elif view in ("mean_image", "pixel_zscore"):
                mean, std = self.pixel_stats
                values = self.pool[0] - mean[positions]
                if view == "pixel_zscore":
                    values = values / std[positions]
            else:
                raise ValueError(f"unknown view {view!r}")
            self._views[view] = values
        return self._views[view]

    @functools.cached_property
    def _views(self) -> dict[str, np.ndarray]:
        return {}

    def nearest_signatures(self, view: str, sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row signature, the pool row (in one view) nearest to it and the RMS distance between them.

        The pool is searched in a k-d tree over the first ``SIGNATURE_TREE_DIMS`` values of each
        signature (a tree prunes well in few dimensions; 50,000 queries take about a second), and the
        distance is then measured over all of them: a row that is a canonical one prepared by an affine
        map has that row's signature exactly, so it is its nearest neighbour in any subset of values.
        """
        if view not in self._signature_trees:
            from sklearn.neighbors import KDTree

            full = signatures(self.pool_values(view), self.channel_of(self.positions()))
            self._signature_trees[view] = (KDTree(full[:, :SIGNATURE_TREE_DIMS]), full)
        tree, full = self._signature_trees[view]
        _, idx = tree.query(sig[:, :SIGNATURE_TREE_DIMS], k=1)
        idx = idx[:, 0]
        return idx, np.sqrt(np.mean((sig - full[idx]) ** 2, axis=1))

    @functools.cached_property
    def _signature_trees(self) -> dict[str, Any]:
        return {}

    def base_transform(self, rows: np.ndarray, mode: str, row_index: np.ndarray | None = None) -> np.ndarray:
        """Rows of this dataset (full width) prepared by ``mode`` before the per-channel affine map.

        With ``row_index`` (pool indices), ``rows`` are that pool rows' sampled values and the per-row
        statistics come from the full rows.
        """
        if mode == "channel":
            return rows
        if mode in ("image_std", "image_minmax"):
            if row_index is not None:
                st = self.row_stats
                mean, std, low, high = (st[k][row_index][:, None] for k in ("mean", "std", "min", "max"))
            else:
                mean, std = rows.mean(axis=1, keepdims=True), rows.std(axis=1, keepdims=True)
                low, high = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
            if mode == "image_std":
                # tf.image.per_image_standardization: the spread never below 1/sqrt(values per image).
                floor = 1.0 / np.sqrt(self.width)
                # The floor applies to the spread of values in the student's units; on raw pixel values
                # (a spread of tens) it never binds, so it is applied as in [0, 1] units.
                return (rows - mean) / np.maximum(std, floor * (255.0 if self.integer_valued else 1.0))
            return (rows - low) / np.where(high > low, high - low, 1.0)
        pmean, pstd = self.pixel_stats
        if row_index is not None:
            positions = self.positions()
            pmean, pstd = pmean[positions], pstd[positions]
        if mode == "mean_image":
            return rows - pmean
        if mode == "pixel_zscore":
            return (rows - pmean) / pstd
        raise ValueError(f"unknown preparation {mode!r}")

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


# The views of the canonical rows that row signatures are looked up in, and the preparations each can reveal.
VIEWS: dict[str, tuple[str, ...]] = {
    "as_is": ("channel", "image_std", "image_minmax"),
    "mirrored": ("channel", "image_std", "image_minmax"),
    "mean_image": ("mean_image",),
    "pixel_zscore": ("pixel_zscore",),
}
MODE_WORDS = {
    "channel": "",
    "image_std": "standardised per image",
    "image_minmax": "min-max scaled per image",
    "mean_image": "minus the training set's mean image",
    "pixel_zscore": "standardised per pixel with the training set's mean and spread",
}
SIGNATURE_TREE_DIMS = 8  # signature values a k-d tree searches on (see Canonical.nearest_signatures)
SIGNATURE_TOLERANCE = 0.35
EXACT_FIT = 1e-4  # relative RMS residual of a preparation that reproduces the recorded values to float precision  # RMS distance between row signatures (unit-variance values), first pass
AUGMENTED_MIN_ROWS = 16  # rows found exactly that verify an augmented stream, at least (and 2% of it)
AUGMENTED_MIN_FRACTION = 0.02
DISTRIBUTION_TOLERANCE = 0.15  # channel means and spreads of augmented data, in prepared-training-set spreads


def signatures(samples: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """Each row's samples standardised per channel within the row: unchanged by any per-channel or
    per-row affine map of positive scale (so by /255, standardisation, per-image standardisation)."""
    out = np.zeros_like(samples, dtype=np.float64)
    for c in np.unique(channel):
        cols = channel == c
        part = samples[:, cols]
        mean = part.mean(axis=1, keepdims=True)
        std = part.std(axis=1, keepdims=True)
        out[:, cols] = np.where(std > 1e-12, (part - mean) / np.where(std > 1e-12, std, 1.0), 0.0)
    return out


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
    mode: str = "channel"  # the preparation before the per-channel affine map (see MODE_WORDS)
    near_test_rows: list[int] = dataclasses.field(default_factory=list)  # test rows found as near copies only
    mirrored_rows: int = 0  # rows found as mirror images of canonical ones
    augmented: bool = False  # verified from the rows found exactly, the others differing as augmented copies do

    @property
    def distinct_test_rows(self) -> int:
        """Test rows trained on: found exactly, or as near copies (see ``_near_test_rows``)."""
        return len({i for i in self.test_rows if i >= 0} | set(self.near_test_rows))

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
    """Match a recorded array (or the recorded rows of a stream) against one canonical dataset."""
    match = _identify(fp, samples, canon)
    if match.verified and match.mode == "channel" and samples is not None and match.matched_rows < match.rows:
        # Rows not found exactly may still be test rows a grey level or two off.
        missed = np.array([t < 0 and s < 0 for t, s in zip(match.train_rows, match.test_rows)])
        ch = canon.channel_of(canon.positions())
        back = (samples[missed] - np.asarray(match.shift)[ch]) / np.asarray(match.scale)[ch]
        match = dataclasses.replace(match, near_test_rows=_near_test_rows(back, canon))
    return match


def _identify(fp: ArrayFingerprint, samples: np.ndarray | None, canon: Canonical) -> DataMatch:
    match = _identify_per_channel(fp, samples, canon)
    if match.verified or not canon.is_image or match.note.startswith(("the data was not", "rows of ")):
        return match
    if samples is None or samples.ndim != 2 or "positions" in match.note or "malformed" in match.note:
        return match
    robust = _identify_by_signature(fp, samples, canon)
    if robust is not None and (robust.verified or robust.matched_rows > match.matched_rows):
        return robust
    if match.dataset == canon.name:
        return match
    # Rows of CIFAR-10's shape that match no canonical row under any preparation the grader reproduces:
    # the model is still this dataset's (its regularizers are judged), its metric cannot be recomputed.
    return dataclasses.replace(
        match,
        dataset=canon.name,
        verified=False,
        note=(
            f"its rows have {canon.name}'s shape, but none of them matched a {canon.name} image as it is, mirrored, "
            "scaled per channel or per image, or with the mean image subtracted"
        ),
    )


def _identify_per_channel(fp: ArrayFingerprint, samples: np.ndarray | None, canon: Canonical) -> DataMatch:
    """The common case: ``student = scale * canonical + shift`` per channel, every row looked up exactly."""
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
    fit_scale, fit_shift = _per_channel_fit(pool[idx[good]], samples[probe_idx][good], ch, canon.channels, (scale, shift))
    usable = fit_scale != 0  # a degenerate fit keeps the candidate's map
    new_scale, new_shift = np.where(usable, fit_scale, scale), np.where(usable, fit_shift, shift)
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


def _near_test_rows(back: np.ndarray, canon: Canonical) -> list[int]:
    """Canonical test rows that rows not matched exactly are near copies of (a grey level or two off,
    a little noise): rows of the same preparation, mapped back, within ``NEAR_DUPLICATE_TOLERANCE``."""
    if not len(back):
        return []
    idx, dist = _nearest(back, canon)
    n_train = len(canon.x_train)
    return sorted({int(i) - n_train for i, d in zip(idx, dist) if d < NEAR_DUPLICATE_TOLERANCE and i >= n_train})


def _identify_by_signature(fp: ArrayFingerprint, samples: np.ndarray, canon: Canonical) -> DataMatch | None:
    """Image rows found by their signatures (see :func:`signatures`), the preparation fitted on the pairs
    found, then every row checked against it. None when no view finds enough rows to fit one."""
    positions = canon.positions()
    ch = canon.channel_of(positions)
    rows = len(samples)
    sig = signatures(samples, ch)
    probe_idx = np.linspace(0, rows - 1, num=min(rows, 400)).astype(int)
    # Each view where enough probe rows find a signature, each preparation it can reveal: the one whose
    # per-channel affine part fits the pairs found best.
    fitted: tuple[float, str, str, np.ndarray, np.ndarray] | None = None
    for view, modes in VIEWS.items():
        if fitted is not None and fitted[0] < EXACT_FIT:
            break  # an exact fit already: the other views (their statistics cost seconds on 50,000 images) cannot beat it
        idx, dist = canon.nearest_signatures(view, sig[probe_idx])
        good = dist < SIGNATURE_TOLERANCE
        if int(good.sum()) < min(8, len(probe_idx)):
            continue
        student = samples[probe_idx][good]
        found = idx[good]
        raw = canon.pool_values("mirrored" if view == "mirrored" else "as_is")[found]
        for mode in modes:
            base = canon.base_transform(raw, mode, row_index=found)
            scale, shift = _per_channel_fit(base, student, ch, canon.channels)
            resid = student - (scale[ch] * base + shift[ch])
            rel = float(np.sqrt(np.mean(resid**2)) / max(float(student.std()), 1e-12))
            # The simplest preparation that reproduces the values wins: per-image min-max equals /255 on
            # every image that spans 0-255, and is not preferred for that.
            if fitted is None or (rel < fitted[0] and fitted[0] >= EXACT_FIT):
                fitted = (rel, view, mode, scale, shift)
    if fitted is None:
        return None
    rel, view, mode, scale, shift = fitted
    if rel > 0.05 or np.any(scale == 0):
        return None
    # Every row, strictly: in each view its preparation can be seen in, the nearest signature must be
    # the row itself once prepared.
    spread = np.array([max(float(samples[:, ch == c].std()), 1e-12) for c in range(canon.channels)])[ch]
    chosen = np.full(rows, -1, dtype=np.int64)
    mirrored = np.zeros(rows, dtype=bool)
    views = ("as_is", "mirrored") if mode in VIEWS["as_is"] else (view,)
    for v in views:
        todo = np.flatnonzero(chosen < 0)
        if not len(todo):
            break
        near, _ = canon.nearest_signatures(v, sig[todo])
        raw_all = canon.pool_values("mirrored" if v == "mirrored" else "as_is")[near]
        predicted = scale[ch] * canon.base_transform(raw_all, mode, row_index=near) + shift[ch]
        err = np.sqrt(np.mean(((samples[todo] - predicted) / spread) ** 2, axis=1))
        ok = err < STRICT_TOLERANCE
        chosen[todo[ok]] = near[ok]
        mirrored[todo[ok]] = v == "mirrored"
    n_train = len(canon.x_train)
    found_all = chosen >= 0
    matched = int(found_all.sum())
    verified = matched >= VERIFIED_FRACTION * rows
    augmented = False
    note = ""
    if not verified:
        enough = matched >= max(AUGMENTED_MIN_ROWS, AUGMENTED_MIN_FRACTION * rows)
        consistent, why = _distribution_agrees(fp, canon, mode, scale, shift)
        augmented = enough and consistent
        verified = augmented
        note = (
            f"{matched} of {rows} rows matched {canon.name} exactly and the rest have the distribution of its "
            "prepared training images, as augmented copies do"
            if augmented
            else f"only {matched} of {rows} rows matched {canon.name} after preparing it ({why or 'too few rows'})"
        )
    return DataMatch(
        dataset=canon.name,
        verified=verified,
        scale=[float(v) for v in scale],
        shift=[float(v) for v in shift],
        channels=canon.channels,
        sample_shape=[int(s) for s in fp.shape[1:]],
        rows=rows,
        matched_rows=matched,
        train_rows=[int(i) for i in np.where(found_all & (chosen < n_train), chosen, -1)],
        test_rows=[int(i) for i in np.where(found_all & (chosen >= n_train), chosen - n_train, -1)],
        note=note,
        mode=mode,
        mirrored_rows=int(mirrored.sum()),
        augmented=augmented,
    )


def _per_channel_fit(
    base: np.ndarray,
    student: np.ndarray,
    ch: np.ndarray,
    channels: int,
    start: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``student = scale * base + shift`` per channel; a channel with too little to fit on
    keeps ``start`` (the identity map by default)."""
    scale, shift = (start[0].copy(), start[1].copy()) if start else (np.ones(channels), np.zeros(channels))
    for c in range(channels):
        xs = base[:, ch == c].reshape(-1)
        ys = student[:, ch == c].reshape(-1)
        if xs.size >= 2 and np.ptp(xs) > 0:
            a, b = np.polyfit(xs, ys, 1)
            scale[c], shift[c] = a, b
    return scale, shift


def _distribution_agrees(
    fp: ArrayFingerprint, canon: Canonical, mode: str, scale: np.ndarray, shift: np.ndarray
) -> tuple[bool, str]:
    """Whether the recorded data's per-channel mean and spread are those of the canonical training images
    prepared the same way (augmentation by flips, shifts, crops and small rotations keeps them)."""
    stats = _student_channel_stats(fp, canon)
    if stats is None:
        return False, "its channel statistics were not recorded"
    mean, std = stats
    sample = canon.x_train[np.linspace(0, len(canon.x_train) - 1, num=min(len(canon.x_train), 1000)).astype(int)]
    prepared = canon.base_transform(sample, mode).reshape(-1, canon.channels) * scale + shift
    ref_mean, ref_std = prepared.mean(axis=0), prepared.std(axis=0)
    off = np.maximum(np.abs(mean - ref_mean), np.abs(std - ref_std)) / np.where(ref_std > 0, ref_std, 1.0)
    if np.all(off < DISTRIBUTION_TOLERANCE):
        return True, ""
    return False, f"the other rows' channel statistics differ from the prepared training images by up to {float(off.max()):.2f} spreads"


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
