"""Tests of grader/evaluator/inspect.py on small in-memory Keras models (built with keras.Input, never trained)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers, regularizers  # noqa: E402

from grader.evaluator.inspect import (  # noqa: E402
    HISTOGRAM_EDGES,
    abs_histogram,
    kernels,
    layer_facts,
    near_zero_fractions,
    penalised_kernels,
    regularizer_facts,
    regularizer_from_config,
)
from grader.records import LayerFacts  # noqa: E402


def dense_model(**dense_kwargs: Any) -> Any:
    inputs = keras.Input((5,))
    outputs = layers.Dense(3, name="hidden", **dense_kwargs)(inputs)
    return keras.Model(inputs, outputs)


def facts_of(model: Any, name: str) -> LayerFacts:
    return next(f for f in layer_facts(model) if f.name == name)


# ------------------------------------------------------------------------------------------------
# layer_facts: regularizer classification
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "kind", "l1", "l2"),
    [
        pytest.param(lambda: regularizers.L1(1e-4), "l1", 1e-4, 0.0, id="L1"),
        pytest.param(lambda: regularizers.l1(1e-4), "l1", 1e-4, 0.0, id="l1-alias"),
        pytest.param(lambda: "l1", "l1", 0.01, 0.0, id="l1-string"),
        pytest.param(lambda: regularizers.L2(1e-3), "l2", 0.0, 1e-3, id="L2"),
        pytest.param(lambda: "l2", "l2", 0.0, 0.01, id="l2-string"),
        pytest.param(lambda: regularizers.L1L2(l1=1e-4), "l1", 1e-4, 0.0, id="L1L2-l1-only"),
        pytest.param(lambda: regularizers.L1L2(l2=1e-4), "l2", 0.0, 1e-4, id="L1L2-l2-only"),
        pytest.param(lambda: regularizers.L1L2(l1=1e-4, l2=1e-4), "l1_l2", 1e-4, 1e-4, id="L1L2-both"),
    ],
)
def test_kernel_regularizer_is_classified_by_its_penalties(make: Any, kind: str, l1: float, l2: float) -> None:
    facts = facts_of(dense_model(kernel_regularizer=make()), "hidden")

    reg = facts.kernel_regularizer
    assert reg is not None
    assert reg.kind == kind
    assert reg.l1 == pytest.approx(l1, rel=1e-6)
    assert reg.l2 == pytest.approx(l2, rel=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: regularizers.L1L2(0.0, 0.0), id="L1L2-zero"),
        pytest.param(lambda: regularizers.L1L2(), id="L1L2-default"),
        pytest.param(lambda: None, id="None"),
    ],
)
def test_zero_or_absent_penalty_is_no_regularizer(make: Any) -> None:
    facts = facts_of(dense_model(kernel_regularizer=make()), "hidden")

    assert facts.kernel_regularizer is None


def test_bias_and_activity_regularizers_are_reported_separately_from_the_kernel() -> None:
    model = dense_model(bias_regularizer=regularizers.L2(1e-2), activity_regularizer=regularizers.L1(1e-3))

    facts = facts_of(model, "hidden")

    assert facts.kernel_regularizer is None
    assert facts.bias_regularizer is not None and facts.bias_regularizer.kind == "l2"
    assert facts.activity_regularizer is not None and facts.activity_regularizer.kind == "l1"
    assert facts.activity_regularizer.l1 == pytest.approx(1e-3, rel=1e-6)


def test_a_regularizer_without_l1_or_l2_is_other() -> None:
    model = dense_model(kernel_regularizer=regularizers.OrthogonalRegularizer(factor=0.01))

    reg = facts_of(model, "hidden").kernel_regularizer

    assert reg is not None
    assert reg.kind == "other"
    assert reg.class_name == "OrthogonalRegularizer"


def test_regularizer_facts_of_none_is_none() -> None:
    assert regularizer_facts(None) is None


def test_dense_kernel_shape_is_counted() -> None:
    facts = facts_of(dense_model(), "hidden")

    assert facts.class_name == "Dense"
    assert facts.has_kernel is True
    assert facts.kernel_params == 5 * 3


# ------------------------------------------------------------------------------------------------
# layer kinds and nesting
# ------------------------------------------------------------------------------------------------


def small_cnn(kind: str) -> Any:
    reg = regularizers.L1(1e-4) if kind == "l1" else regularizers.L2(1e-4)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, (3, 3), activation="relu", kernel_regularizer=reg, name="conv"),
            layers.MaxPooling2D((2, 2), name="pool"),
            layers.Flatten(name="flat"),
            layers.Dense(5, kernel_regularizer=reg, name="dense"),
        ]
    )


def test_conv2d_is_conv_and_dense_pooling_flatten_are_not() -> None:
    facts = {f.name: f for f in layer_facts(small_cnn("l1"))}

    assert facts["conv"].is_conv is True
    assert facts["conv"].class_name == "Conv2D"
    assert facts["conv"].kernel_params == 3 * 3 * 3 * 4
    assert [facts[n].is_conv for n in ("pool", "flat", "dense")] == [False, False, False]
    assert facts["pool"].has_kernel is False and facts["pool"].kernel_params == 0
    assert facts["conv"].kernel_regularizer is not None and facts["conv"].kernel_regularizer.kind == "l1"


def test_layers_of_a_sequential_nested_in_a_functional_model_are_walked() -> None:
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(2, 3, kernel_regularizer=regularizers.L2(1e-3), name="inner_conv"),
            layers.Flatten(name="inner_flat"),
        ],
        name="backbone",
    )
    inputs = keras.Input((8, 8, 3))
    outputs = layers.Dense(2, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)

    facts = {f.name: f for f in layer_facts(model)}

    assert {"backbone", "inner_conv", "inner_flat", "head"} <= set(facts)
    assert facts["inner_conv"].is_conv
    assert facts["inner_conv"].kernel_regularizer is not None
    assert facts["inner_conv"].kernel_regularizer.kind == "l2"
    assert facts["backbone"].has_kernel is False
    assert {key.split("/")[-1] for key in kernels(model)} == {"inner_conv", "head"}


def test_kernels_of_nested_layers_with_the_same_name_are_all_kept() -> None:
    first = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="dense")], name="first")
    second = keras.Sequential([keras.Input((3,)), layers.Dense(2, name="dense")], name="second")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, second(first(inputs)))

    arrays = kernels(model)

    assert sorted(a.size for a in arrays.values()) == [6, 12]


def test_a_shared_layer_is_listed_once() -> None:
    shared = layers.Dense(4, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], layers.Add()([shared(a), shared(b)]))

    names = [f.name for f in layer_facts(model)]

    assert names.count("shared") == 1


def test_kernels_returns_numpy_arrays_of_the_kernel_shapes() -> None:
    arrays = {key.split("/")[-1]: a for key, a in kernels(small_cnn("l2")).items()}

    assert set(arrays) == {"conv", "dense"}
    assert arrays["conv"].shape == (3, 3, 3, 4)
    assert arrays["dense"].shape == (36, 5)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())


def test_penalised_kernels_selects_layers_by_kernel_penalty_kind() -> None:
    model = small_cnn("l1")
    facts, arrays = layer_facts(model), kernels(model)

    assert len(penalised_kernels(facts, arrays, "l1")) == 2
    assert penalised_kernels(facts, arrays, "l2") == []


# ------------------------------------------------------------------------------------------------
# near_zero_fractions and abs_histogram on known arrays
# ------------------------------------------------------------------------------------------------


def test_near_zero_fractions_count_magnitudes_below_each_threshold() -> None:
    a = np.array([0.0, -5e-5, 5e-4, -5e-3, 0.5])
    b = np.array([[2.0, -1e-3], [1e-2, 1e-4]])  # thresholds are strict: 1e-3 is not below 1e-3

    fractions = near_zero_fractions([a, b])

    assert fractions == {"0.01": 6 / 9, "0.001": 4 / 9, "0.0001": 2 / 9}


def test_near_zero_fractions_of_nothing_is_empty() -> None:
    assert near_zero_fractions([]) == {}


def test_near_zero_keys_match_the_rubric_threshold_spelling() -> None:
    assert set(near_zero_fractions([np.zeros(3)])) == {"0.01", "0.001", "0.0001"}


def test_abs_histogram_edges_are_quarter_decades_from_1e_minus_8_to_10() -> None:
    assert HISTOGRAM_EDGES[0] == -8.0 and HISTOGRAM_EDGES[-1] == 1.0
    assert len(HISTOGRAM_EDGES) == 37
    assert np.allclose(np.diff(HISTOGRAM_EDGES), 0.25)


def test_abs_histogram_places_known_magnitudes_in_known_bins() -> None:
    values = np.array([0.0, 1e-12, -1.0, 1e-3, 0.5, 100.0, -10.0])

    hist = abs_histogram([values[:3], values[3:].reshape(2, 2)])

    counts = hist["counts"]
    assert hist["edges"] == HISTOGRAM_EDGES
    assert len(counts) == 36
    assert sum(counts) == 7
    expected = [0.0] * 36
    expected[0] = 2  # exact zero and 1e-12 are clipped to 1e-8
    expected[20] = 1  # 1e-3: log10 = -3, bin [-3, -2.75)
    expected[30] = 1  # 0.5: log10 = -0.30, bin [-0.5, -0.25)
    expected[32] = 1  # |-1|: log10 = 0, bin [0, 0.25)
    expected[35] = 2  # 10 (log10 = 1, the last edge) and 100 (clipped) fall into the last bin
    assert counts == expected


def test_abs_histogram_of_nothing_has_edges_and_no_counts() -> None:
    assert abs_histogram([]) == {"edges": HISTOGRAM_EDGES, "counts": []}


# ------------------------------------------------------------------------------------------------
# regularizer_from_config
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reg", "kind", "l1", "l2"),
    [
        pytest.param(lambda: regularizers.L1(1e-4), "l1", 1e-4, 0.0, id="L1"),
        pytest.param(lambda: regularizers.L2(1e-5), "l2", 0.0, 1e-5, id="L2"),
        pytest.param(lambda: regularizers.L1L2(l1=1e-4), "l1", 1e-4, 0.0, id="L1L2-l1"),
        pytest.param(lambda: regularizers.L1L2(l1=1e-4, l2=2e-4), "l1_l2", 1e-4, 2e-4, id="L1L2-both"),
    ],
)
def test_serialized_regularizer_configs_are_classified(reg: Any, kind: str, l1: float, l2: float) -> None:
    config = keras.saving.serialize_keras_object(reg())

    facts = regularizer_from_config(config)

    assert facts is not None
    assert (facts.kind, facts.class_name) == (kind, config["class_name"])
    assert facts.l1 == pytest.approx(l1, rel=1e-6)
    assert facts.l2 == pytest.approx(l2, rel=1e-6)


def test_serialized_zero_l1l2_is_no_regularizer() -> None:
    assert regularizer_from_config(keras.saving.serialize_keras_object(regularizers.L1L2())) is None


@pytest.mark.parametrize(
    ("name", "kind", "l1", "l2"), [("l1", "l1", 0.01, 0.0), ("l2", "l2", 0.0, 0.01), ("L1", "l1", 0.01, 0.0)]
)
def test_string_configs_use_the_keras_default_strength(name: str, kind: str, l1: float, l2: float) -> None:
    facts = regularizer_from_config(name)

    assert facts is not None
    assert (facts.kind, facts.l1, facts.l2) == (kind, l1, l2)


def test_a_class_config_without_config_dict_uses_defaults() -> None:
    facts = regularizer_from_config({"class_name": "L2"})

    assert facts is not None and (facts.kind, facts.l2) == ("l2", 0.01)


@pytest.mark.parametrize(
    "config",
    [
        {
            "module": None,
            "class_name": "MyCustomPenalty",
            "config": {"strength": 0.1},
            "registered_name": "MyCustomPenalty",
        },
        "orthogonal_regularizer",
    ],
)
def test_unknown_regularizer_class_is_other_and_keeps_its_name(config: Any) -> None:
    facts = regularizer_from_config(config)

    assert facts is not None
    assert facts.kind == "other"
    assert facts.class_name == (config["class_name"] if isinstance(config, dict) else config)


def test_none_config_is_no_regularizer_and_other_types_are_other() -> None:
    assert regularizer_from_config(None) is None
    weird = regularizer_from_config(3.5)
    assert weird is not None and (weird.kind, weird.class_name) == ("other", "float")
