"""The instructor's solution to the L1/L2 Regularization Exercise, as model builders.

``build_recap_model`` is the distributed recap model with its minimal fix (a weight penalty,
``kernel_regularizer``, on the output layer, L1 for the first model and L2 for the second);
``build_cnn`` is the Multiclass Classification Exercise's Task 2 CNN with a weight penalty on the
convolution and both dense layers. TensorFlow is imported on first use, not at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# Penalty strength of the distributed recap code (kept by the minimal fix).
RECAP_PENALTY: float = 1e-5
# Penalty strength for the practice CNN: visible sparsity, accuracy no worse than without a penalty.
CNN_PENALTY: float = 1e-4
RECAP_EPOCHS: int = 100
RECAP_BATCH: int = 32
CNN_EPOCHS: int = 10

PENALTIES: tuple[str, ...] = ("l1", "l2")
CIFAR10_SHAPE: tuple[int, int, int] = (32, 32, 3)
CIFAR10_CLASSES: int = 10

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_SHAPE",
    "CNN_EPOCHS",
    "CNN_PENALTY",
    "PENALTIES",
    "RECAP_BATCH",
    "RECAP_EPOCHS",
    "RECAP_PENALTY",
    "build_cnn",
    "build_recap_model",
    "weight_penalty",
]


def _keras() -> Any:
    # tf.keras rather than a bare ``import keras``: it is what the exercise uses, and with
    # TensorFlow >= 2.16 it is Keras 3 either way.
    import tensorflow as tf

    return tf.keras


def weight_penalty(penalty: str, strength: float) -> keras.regularizers.Regularizer:
    """An ``L1`` or ``L2`` regularizer of ``strength``, for a layer's ``kernel_regularizer``."""
    regularizers = _keras().regularizers
    kind = penalty.lower()
    if kind == "l1":
        return regularizers.L1(strength)
    if kind == "l2":
        return regularizers.L2(strength)
    raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")


def build_recap_model(
    penalty: str, n_features: int = 13, strength: float = RECAP_PENALTY
) -> keras.Model:
    """The recap's Boston Housing regressor: ``Dense(10, relu) -> Dense(1)``, compiled.

    The penalty goes where the distributed code put its activity penalty (the output layer), but
    on the weights: that is the minimal fix a student is expected to make.
    """
    k = _keras()
    model = k.Sequential(
        [
            k.Input(shape=(n_features,)),
            k.layers.Dense(10, activation="relu"),
            k.layers.Dense(1, kernel_regularizer=weight_penalty(penalty, strength)),
        ]
    )
    model.compile(loss="mean_squared_error", optimizer="adam", metrics=["mean_squared_error"])
    return model


def build_cnn(penalty: str, strength: float = CNN_PENALTY) -> keras.Model:
    """The Multiclass Classification Exercise's Task 2 CNN with a weight penalty, compiled.

    ``Conv2D(32, 3x3, relu) -> MaxPooling2D(2x2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax)``,
    with the same ``kernel_regularizer`` kind and strength on the convolution and both dense layers.
    Expects pixels scaled to [0, 1] (``astype('float32') / 255``) and integer labels.
    """
    k = _keras()
    layers = k.layers
    model = k.Sequential(
        [
            k.Input(shape=CIFAR10_SHAPE),
            layers.Conv2D(
                32, (3, 3), activation="relu", kernel_regularizer=weight_penalty(penalty, strength)
            ),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu", kernel_regularizer=weight_penalty(penalty, strength)),
            layers.Dense(
                CIFAR10_CLASSES,
                activation="softmax",
                kernel_regularizer=weight_penalty(penalty, strength),
            ),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
