"""Only the kernel penalties a training loss included count (``grader.judging.assemble._trained_facts``).

The kernel records, per layer path, the penalty its kernel variable carried when trained; the saved
model's facts come from the reloaded file, whose layer paths are the bare layer names. The record can
only take a penalty away from what the file shows.
"""

from __future__ import annotations

from typing import Any

from grader.judging.assemble import _trained_facts
from grader.records import ArrayFingerprint, FitRecord, LayerFacts, ModelFacts, RegularizerFacts

L1 = RegularizerFacts("l1", 1e-4, 0.0, "L1")
L1_CONFIG = {"class_name": "L1", "config": {"l1": 1e-4}}


def layer(name: str, kernel_regularizer: RegularizerFacts | None) -> LayerFacts:
    return LayerFacts(name, "Dense", False, True, 10, kernel_regularizer, None, None, path=name)


def facts(*layers: LayerFacts) -> ModelFacts:
    return ModelFacts(1, True, "", "keras", list(layers), 20, {}, {}, None, "")


def fit(trained: dict[str, Any] | None) -> FitRecord:
    none = ArrayFingerprint(kind="none")
    return FitRecord(
        1, "model1", "keras.src.models.sequential.Sequential", 2, 1, 1, None, 0.0, 1.0, {}, none, none, none,
        "models/fit001.keras", "keras", None, None, trained_penalties=trained,
    )


def kinds(f: ModelFacts | None) -> dict[str, str | None]:
    assert f is not None
    return {x.name: x.kernel_regularizer.kind if x.kernel_regularizer else None for x in f.layers}


def test_a_saved_penalty_that_was_not_trained_is_removed_and_named() -> None:
    got, dropped = _trained_facts(facts(layer("dense", L1), layer("dense_1", L1)), fit({"seq/dense": None, "seq/dense_1": L1_CONFIG}))

    assert kinds(got) == {"dense": None, "dense_1": "l1"}
    assert dropped == ["dense"]


def test_a_record_never_adds_a_penalty_the_saved_model_lacks() -> None:
    got, dropped = _trained_facts(facts(layer("dense", None)), fit({"seq/dense": L1_CONFIG}))

    assert kinds(got) == {"dense": None} and dropped == []


def test_without_a_record_the_saved_penalties_stand() -> None:
    got, dropped = _trained_facts(facts(layer("dense", L1)), fit(None))

    assert kinds(got) == {"dense": "l1"} and dropped == []


def test_a_layer_name_shared_by_trained_and_untrained_layers_keeps_its_penalty() -> None:
    # Two nested models both hold a "dense": which one the saved layer is cannot be told by name.
    got, dropped = _trained_facts(facts(layer("dense", L1)), fit({"a/dense": None, "b/dense": L1_CONFIG}))

    assert kinds(got) == {"dense": "l1"} and dropped == []
