"""Tests of grader/judging/provenance.py: recognising the canonical data, and its scaling, from kernel fingerprints.

The canonical datasets here are small synthetic stand-ins: a Boston-like table (60 train / 20 test rows
of 13 float features, one of them binary like CHAS) and CIFAR-like images (40 / 10 uint8 images of 8x8x3).
The student's arrays are fingerprinted exactly as the kernel does, with ``grader.kernel.bootstrap.fingerprint_array``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from grader.judging.provenance import Canonical, DataMatch, identify, identify_any, label_affine, make_canonical
from grader.kernel.bootstrap import fingerprint_array
from grader.records import ArrayFingerprint, from_jsonable

# Per-feature scales of very different magnitudes, like Boston's CRIM (~0-90) ... TAX (~200-700).
FEATURE_SCALES = np.array([10.0, 25.0, 11.0, 1.0, 0.1, 0.7, 28.0, 2.1, 8.7, 170.0, 2.2, 90.0, 7.0])


def boston_like(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 13)) * FEATURE_SCALES + 3 * FEATURE_SCALES
    x[:, 3] = rng.integers(0, 2, size=n)  # a binary column, like CHAS
    return x


@pytest.fixture(scope="module")
def boston() -> Canonical:
    rng = np.random.default_rng(0)
    x = boston_like(rng, 80)
    y = rng.uniform(5.0, 50.0, size=80)
    return make_canonical("boston", x[:60], y[:60], x[60:], y[60:], channels=13)


@pytest.fixture(scope="module")
def images() -> Canonical:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=(50, 1), dtype=np.uint8)
    return make_canonical("cifar10", x[:40], y[:40], x[40:], y[40:], channels=3)


@pytest.fixture
def record(tmp_path: Path) -> Any:
    """Fingerprint an array as the kernel would, and load its samples back from disk."""
    counter = iter(range(1000))

    def _record(array: Any) -> tuple[ArrayFingerprint, np.ndarray]:
        data = fingerprint_array(array, tmp_path / "samples" / f"fit{next(counter):03d}_x.npy", tmp_path)
        fp = from_jsonable(ArrayFingerprint, data)
        assert fp.samples_file is not None
        samples = np.load(tmp_path / fp.samples_file, allow_pickle=False)
        return fp, samples

    return _record


def identify_array(array: Any, canon: Canonical, record: Any) -> DataMatch:
    fp, samples = record(array)
    return identify(fp, samples, canon)


def train_array(canon: Canonical) -> np.ndarray:
    return canon.x_train.reshape(len(canon.x_train), *canon.sample_shape)


# ------------------------------------------------------------------------------------------------
# make_canonical
# ------------------------------------------------------------------------------------------------


def test_make_canonical_flattens_rows_and_remembers_the_shape(images: Canonical) -> None:
    assert images.sample_shape == (8, 8, 3)
    assert images.width == 192
    assert images.x_train.shape == (40, 192) and images.x_train.dtype == np.float64
    assert images.y_train.shape == (40,)
    assert images.integer_valued is True
    assert len(images.positions()) == 32


def test_make_canonical_of_floats_is_not_integer_valued(boston: Canonical) -> None:
    assert boston.integer_valued is False
    assert boston.positions() == list(range(13))


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def test_raw_training_data_is_verified_with_unit_scale_and_zero_shift(boston: Canonical, record: Any) -> None:
    match = identify_array(train_array(boston), boston, record)

    assert match.dataset == "boston"
    assert match.verified
    assert match.note == ""
    assert match.rows == match.matched_rows == 60
    assert np.allclose(match.scale, 1.0, atol=1e-9)
    assert np.allclose(match.shift, 0.0, atol=1e-6)
    assert match.train_rows == list(range(60))
    assert match.distinct_test_rows == 0


def test_float32_raw_data_is_verified(boston: Canonical, record: Any) -> None:
    match = identify_array(train_array(boston).astype(np.float32), boston, record)

    assert match.verified
    assert match.distinct_train_rows == 60


def test_standard_scaled_data_is_verified_with_the_per_feature_affine_map(boston: Canonical, record: Any) -> None:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(boston.x_train)
    student = scaler.transform(boston.x_train)

    match = identify_array(student, boston, record)

    assert match.verified
    # student = scale * canonical + shift, so scale = 1/sigma and shift = -mu/sigma per feature.
    assert np.allclose(match.scale, 1 / scaler.scale_, rtol=1e-6)
    assert np.allclose(match.shift, -scaler.mean_ / scaler.scale_, rtol=1e-6, atol=1e-9)
    assert match.train_rows == list(range(60))


def test_min_max_scaled_data_is_verified(boston: Canonical, record: Any) -> None:
    from sklearn.preprocessing import MinMaxScaler

    scaler = MinMaxScaler().fit(boston.x_train)

    match = identify_array(scaler.transform(boston.x_train), boston, record)

    assert match.verified
    assert np.allclose(match.scale, scaler.scale_, rtol=1e-6)


STATS_CANDIDATE_BUG = (
    "provenance._candidates estimates the standardisation from the recorded array's own statistics, not from the "
    "canonical training split's, so a test split scaled with the scaler fit on the training split is only roughly "
    "mapped back, and the rough pass matches too few rows to verify it"
)


def test_test_split_scaled_with_a_scaler_fit_on_all_the_data_maps_to_test_rows(boston: Canonical, record: Any) -> None:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.concatenate([boston.x_train, boston.x_test]))

    match = identify_array(scaler.transform(np.concatenate([boston.x_train, boston.x_test])), boston, record)

    assert match.verified
    assert match.test_rows[60:] == list(range(20))


def test_test_split_scaled_with_the_training_scaler_maps_to_test_rows(boston: Canonical, record: Any) -> None:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(boston.x_train)

    match = identify_array(scaler.transform(boston.x_test), boston, record)

    assert match.verified
    assert match.test_rows == list(range(20))
    assert match.distinct_test_rows == 20 and match.distinct_train_rows == 0


def test_a_shuffled_subset_of_training_rows_is_verified_in_order(boston: Canonical, record: Any) -> None:
    order = np.random.default_rng(5).permutation(60)[:45]

    match = identify_array(boston.x_train[order], boston, record)

    assert match.verified
    assert match.rows == 45
    assert match.train_rows == [int(i) for i in order]


def test_training_rows_that_include_test_rows_report_the_leaked_rows(boston: Canonical, record: Any) -> None:
    leaked = np.concatenate([boston.x_train, boston.x_test[[2, 5, 7, 11, 2]]])

    match = identify_array(leaked, boston, record)

    assert match.verified
    assert match.distinct_test_rows == 4
    assert match.test_rows[60:] == [2, 5, 7, 11, 2]
    assert match.test_rows[:60] == [-1] * 60
    assert match.distinct_train_rows == 60


def test_data_of_another_width_is_unknown(boston: Canonical, record: Any) -> None:
    match = identify_array(boston.x_train[:, :12], boston, record)

    assert match.dataset == "unknown"
    assert not match.verified
    assert "rows of 12 values, not the 13 of boston" in match.note
    assert match.rows == 60


def test_random_noise_of_the_right_width_is_not_verified(boston: Canonical, record: Any) -> None:
    noise = np.random.default_rng(9).normal(size=(60, 13)) * FEATURE_SCALES + 3 * FEATURE_SCALES

    match = identify_array(noise, boston, record)

    assert not match.verified
    assert match.matched_rows < 0.5 * match.rows
    assert match.note


def test_missing_samples_are_unknown(boston: Canonical, record: Any) -> None:
    fp, _ = record(boston.x_train)

    match = identify(fp, None, boston)

    assert match.dataset == "unknown"
    assert "samples are missing" in match.note


def test_a_fingerprint_that_is_not_an_array_is_unknown(boston: Canonical) -> None:
    fp = from_jsonable(ArrayFingerprint, {"kind": "unsupported", "note": "generator of dtype object"})

    match = identify(fp, None, boston)

    assert match.dataset == "unknown"
    assert "not an array (unsupported: generator" in match.note


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def test_raw_uint8_images_are_verified(images: Canonical, record: Any) -> None:
    match = identify_array(train_array(images).astype(np.uint8), images, record)

    assert match.dataset == "cifar10" and match.verified
    assert match.train_rows == list(range(40))
    assert np.allclose(match.scale, 1.0) and np.allclose(match.shift, 0.0, atol=1e-6)


def test_images_divided_by_255_are_verified_with_scale_1_over_255(images: Canonical, record: Any) -> None:
    scaled = train_array(images).astype(np.float32) / 255.0

    match = identify_array(scaled, images, record)

    assert match.verified
    assert match.matched_rows == 40
    assert match.channels == 3
    assert np.allclose(match.scale, 1 / 255, rtol=1e-4)
    assert np.allclose(match.shift, 0.0, atol=1e-5)
    assert match.sample_shape == [8, 8, 3]


def test_flattened_images_are_verified(images: Canonical, record: Any) -> None:
    flat = (train_array(images) / 255.0).reshape(40, 192)

    match = identify_array(flat, images, record)

    assert match.verified
    assert match.sample_shape == [192]
    assert match.train_rows == list(range(40))


def test_test_images_in_training_data_are_reported(images: Canonical, record: Any) -> None:
    test_images = images.x_test.reshape(10, 8, 8, 3)
    mixed = np.concatenate([train_array(images), test_images]) / 255.0

    match = identify_array(mixed, images, record)

    assert match.verified
    assert match.distinct_test_rows == 10


def test_random_images_are_not_verified(images: Canonical, record: Any) -> None:
    noise = np.random.default_rng(3).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)

    match = identify_array(noise, images, record)

    assert not match.verified


def test_identify_any_picks_the_dataset_of_the_right_width(boston: Canonical, images: Canonical, record: Any) -> None:
    fp, samples = record(train_array(images) / 255.0)

    match = identify_any(fp, samples, [boston, images])

    assert match.dataset == "cifar10" and match.verified


# ------------------------------------------------------------------------------------------------
# label_affine
# ------------------------------------------------------------------------------------------------


def test_label_affine_recovers_standardised_targets(boston: Canonical, record: Any) -> None:
    match = identify_array(boston.x_train, boston, record)
    mu, sigma = boston.y_train.mean(), boston.y_train.std()
    y_student = ((boston.y_train - mu) / sigma).reshape(-1, 1)

    affine = label_affine(y_student, match, boston)

    assert affine is not None
    a, b = affine
    assert a == pytest.approx(1 / sigma, rel=1e-9)
    assert b == pytest.approx(-mu / sigma, rel=1e-9)


def test_label_affine_of_raw_targets_in_shuffled_order_is_identity(boston: Canonical, record: Any) -> None:
    order = np.random.default_rng(2).permutation(60)
    match = identify_array(boston.x_train[order], boston, record)

    affine = label_affine(boston.y_train[order], match, boston)

    assert affine == pytest.approx((1.0, 0.0), abs=1e-9)


def test_label_affine_of_unrelated_targets_is_none(boston: Canonical, record: Any) -> None:
    match = identify_array(boston.x_train, boston, record)

    assert label_affine(np.random.default_rng(4).normal(size=60), match, boston) is None


def test_label_affine_of_multi_column_targets_is_none(boston: Canonical, record: Any) -> None:
    match = identify_array(boston.x_train, boston, record)

    assert label_affine(np.zeros((60, 2)), match, boston) is None


# ------------------------------------------------------------------------------------------------
# Images prepared beyond one per-channel affine map, and augmented
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos() -> Canonical:
    """32x32 colour images with smooth structure, like photographs: a shifted copy is another image."""
    rng = np.random.default_rng(7)
    coarse = rng.uniform(0, 255, size=(360, 8, 8, 3))
    x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 12, size=(360, 32, 32, 3))
    x = np.clip(x, 0, 255).astype(np.uint8)
    y = rng.integers(0, 10, size=(360, 1), dtype=np.uint8)
    return make_canonical("cifar10", x[:300], y[:300], x[300:], y[300:], channels=3)


def photo_split(canon: Canonical, split: str = "train") -> np.ndarray:
    rows = canon.x_train if split == "train" else canon.x_test
    return rows.reshape(len(rows), *canon.sample_shape)


def per_image_standardisation(x: np.ndarray) -> np.ndarray:
    """What tf.image.per_image_standardization computes, per image."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=1, keepdims=True)
    std = np.maximum(flat.std(axis=1, keepdims=True), 1 / np.sqrt(flat.shape[1]))
    return ((flat - mean) / std).reshape(x.shape).astype(np.float32)


def prepared_test_inputs(canon: Canonical, match: DataMatch) -> np.ndarray:
    """The canonical test images as the evaluator gets them for this match (grade + evaluate)."""
    from grader.evaluator.process import _prepare_inputs

    rows = canon.base_transform(canon.x_test, match.mode)
    return _prepare_inputs_from(rows, canon, match, _prepare_inputs)


def _prepare_inputs_from(rows: np.ndarray, canon: Canonical, match: DataMatch, prepare: Any) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, rows.reshape(len(rows), *canon.sample_shape), allow_pickle=False)
        spec = {
            "x_file": str(path), "channels": match.channels, "scale": match.scale, "shift": match.shift,
            "sample_shape": match.sample_shape,
        }
        return np.asarray(prepare(spec))


def test_per_image_standardised_images_are_verified_and_their_test_inputs_reproduced(photos: Canonical, record: Any) -> None:
    match = identify_array(per_image_standardisation(photo_split(photos) / 255.0), photos, record)

    assert match.verified and match.mode == "image_std"
    assert match.matched_rows == 300
    expected = per_image_standardisation(photo_split(photos, "test") / 255.0)
    assert np.allclose(prepared_test_inputs(photos, match), expected, atol=1e-3)


def test_mean_image_subtraction_is_verified_and_reproduced(photos: Canonical, record: Any) -> None:
    train = photo_split(photos) / 255.0
    mean_image = train.mean(axis=0)
    match = identify_array((train - mean_image).astype(np.float32), photos, record)

    assert match.verified and match.mode == "mean_image"
    expected = photo_split(photos, "test") / 255.0 - mean_image
    assert np.allclose(prepared_test_inputs(photos, match), expected, atol=1e-4)


def test_per_pixel_z_scores_with_the_training_statistics_are_verified(photos: Canonical, record: Any) -> None:
    train = photo_split(photos).astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    match = identify_array((train - mean) / std, photos, record)

    assert match.verified and match.mode == "pixel_zscore"
    expected = (photo_split(photos, "test") - mean) / std
    assert np.allclose(prepared_test_inputs(photos, match), expected, atol=1e-4)


def test_global_z_scores_in_float64_stay_a_per_channel_map(photos: Canonical, record: Any) -> None:
    train = photo_split(photos).astype(np.float64)
    match = identify_array((train - train.mean()) / train.std(), photos, record)

    assert match.verified and match.mode == "channel"


def test_a_training_set_extended_with_its_mirror_images_is_verified(photos: Canonical, record: Any) -> None:
    train = photo_split(photos) / 255.0
    match = identify_array(np.concatenate([train, train[:, :, ::-1]]).astype(np.float32), photos, record)

    assert match.verified and match.matched_rows == 600
    assert match.mirrored_rows == 300
    assert match.distinct_train_rows == 300 and match.distinct_test_rows == 0
    assert np.allclose(match.scale, 1 / 255, rtol=1e-4)


def shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shifts of 1-4 pixels with edge filling, as ImageDataGenerator's shift ranges do."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        dy, dx = rng.integers(1, 5, size=2) * rng.choice([-1, 1], size=2)
        padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="edge")
        out[i] = padded[4 + dy : 36 + dy, 4 + dx : 36 + dx]
    return out


def test_an_augmented_stream_is_verified_from_its_unaugmented_rows(photos: Canonical, record: Any) -> None:
    rng = np.random.default_rng(3)
    train = photo_split(photos) / 255.0
    flips = rng.random(300) < 0.5
    batch = np.where(flips[:, None, None, None], train[:, :, ::-1], train)
    moved = rng.random(300) < 0.8
    batch[moved] = shifted(batch[moved], rng)
    match = identify_array(batch.astype(np.float32), photos, record)

    assert match.verified and match.augmented
    assert 0 < match.matched_rows < 0.9 * 300
    assert np.allclose(match.scale, 1 / 255, rtol=1e-3)
    assert match.distinct_test_rows == 0


def test_test_images_in_an_augmented_stream_are_reported(photos: Canonical, record: Any) -> None:
    rng = np.random.default_rng(4)
    everything = np.concatenate([photo_split(photos), photo_split(photos, "test")]) / 255.0
    moved = rng.random(len(everything)) < 0.7
    everything[moved] = shifted(everything[moved], rng)
    match = identify_array(everything.astype(np.float32), photos, record)

    assert match.verified
    assert match.distinct_test_rows > 0


def test_images_augmented_beyond_recognition_still_name_their_dataset_unverified(photos: Canonical, record: Any) -> None:
    train = photo_split(photos) / 255.0
    rotated = np.rot90(train, k=1, axes=(1, 2)).copy()  # every row changed
    match = identify_array(rotated.astype(np.float32), photos, record)

    assert match.dataset == "cifar10" and not match.verified
    assert "shape" in match.note


def test_random_noise_of_a_dataset_shape_is_never_verified(photos: Canonical, record: Any) -> None:
    noise = np.random.default_rng(5).uniform(0, 1, size=(200, 32, 32, 3)).astype(np.float32)
    match = identify_array(noise, photos, record)

    assert not match.verified and match.matched_rows == 0


def test_test_images_a_grey_level_or_two_off_in_the_training_data_are_reported(images: Canonical, record: Any) -> None:
    rng = np.random.default_rng(9)
    noisy_test = np.clip(photo_split_of(images, "test") + rng.integers(-2, 3, size=(10, 8, 8, 3)), 0, 255)
    training = np.concatenate([photo_split_of(images, "train"), noisy_test]).astype(np.float32) / 255.0
    match = identify_array(training, images, record)

    assert match.verified
    assert match.distinct_test_rows == 10


def test_noise_augmented_training_rows_are_not_taken_for_test_rows(images: Canonical, record: Any) -> None:
    rng = np.random.default_rng(10)
    noisy = np.clip(photo_split_of(images, "train") + rng.integers(-2, 3, size=(40, 8, 8, 3)), 0, 255)
    training = np.concatenate([photo_split_of(images, "train"), noisy]).astype(np.float32) / 255.0
    match = identify_array(training, images, record)

    assert match.distinct_test_rows == 0


def photo_split_of(canon: Canonical, split: str) -> np.ndarray:
    rows = canon.x_train if split == "train" else canon.x_test
    return rows.reshape(len(rows), *canon.sample_shape)
