"""Tests of grader/judging/hints.py on the errors Keras-2 code really raises under Keras 3.15.1 and TensorFlow 2.21
(each message below was observed running the snippet beside it; the checks that quote the hints are
tested in test_checks.py)."""

from __future__ import annotations

import re

import pytest

from grader.judging.hints import keras3_hint

# (Keras-2 code, exception name, exception message) as raised in a kernel running Keras 3.15.1 / TF 2.21.
OBSERVED = {
    "adam_lr": ("tf.keras.optimizers.Adam(lr=0.001)", "ValueError", "Argument(s) not recognized: {'lr': 0.001}"),
    "sgd_lr": ("tf.keras.optimizers.SGD(lr=0.01)", "ValueError", "Argument(s) not recognized: {'lr': 0.01}"),
    "input_int": ("keras.Input(shape=13)", "ValueError", "Cannot convert '13' to a shape."),
    "input_shape_int": (
        "tf.keras.Sequential([tf.keras.layers.Dense(10, input_shape=13)])",
        "ValueError",
        "Cannot convert '13' to a shape.",
    ),
    "np_utils_import": (
        "from keras.utils.np_utils import to_categorical",
        "ModuleNotFoundError",
        "No module named 'keras.utils.np_utils'",
    ),
    "np_utils_attribute": (
        "keras.utils.np_utils.to_categorical(y)",
        "AttributeError",
        "module 'keras.utils' has no attribute 'np_utils'",
    ),
    "fit_generator": (
        "model.fit_generator(gen, steps_per_epoch=1)",
        "AttributeError",
        "'Sequential' object has no attribute 'fit_generator'",
    ),
    "evaluate_generator": (
        "model.evaluate_generator(gen, steps=1)",
        "AttributeError",
        "'Sequential' object has no attribute 'evaluate_generator'",
    ),
    "predict_generator": (
        "model.predict_generator(gen, steps=1)",
        "AttributeError",
        "'Functional' object has no attribute 'predict_generator'",
    ),
    "save_without_extension": (
        'model.save("mymodel")',
        "ValueError",
        "Invalid filepath extension for saving. Please add either a `.keras` extension for the native Keras format "
        "(recommended) or a `.h5` extension. Use `model.export(filepath)` if you want to export a SavedModel for use "
        "with TFLite/TFServing/etc. Received: filepath=mymodel.",
    ),
    "lowercase_adam": (
        "tf.keras.optimizers.adam(0.001)",
        "AttributeError",
        "module 'keras.optimizers' has no attribute 'adam'",
    ),
    "lowercase_rmsprop": (
        "tf.keras.optimizers.rmsprop(0.001)",
        "AttributeError",
        "module 'tensorflow.keras.optimizers' has no attribute 'rmsprop'",
    ),
    "lowercase_import": (
        "from keras.optimizers import adam",
        "ImportError",
        "cannot import name 'adam' from 'keras.optimizers' (/venv/lib/python3.11/site-packages/keras/optimizers/__init__.py)",
    ),
    "image_data_generator_import": (
        "from keras.preprocessing.image import ImageDataGenerator",
        "ImportError",
        "cannot import name 'ImageDataGenerator' from 'keras.preprocessing.image' "
        "(/venv/lib/python3.11/site-packages/keras/preprocessing/image/__init__.py)",
    ),
    "image_data_generator_attribute": (
        "keras.preprocessing.image.ImageDataGenerator(rotation_range=10)",
        "AttributeError",
        "module 'keras.preprocessing.image' has no attribute 'ImageDataGenerator'",
    ),
    "predict_classes": (
        "model.predict_classes(x_test)",
        "AttributeError",
        "'Sequential' object has no attribute 'predict_classes'",
    ),
    # In a notebook the kernel reports SystemExit with the exit code as its value ("" for sys.exit()).
    "sys_exit": ("sys.exit()", "SystemExit", ""),
    "sys_exit_0": ("sys.exit(0)", "SystemExit", "0"),
}


def hint_for(case: str) -> str:
    _, name, value = OBSERVED[case]
    return keras3_hint(name, value)


@pytest.mark.parametrize("case", ["adam_lr", "sgd_lr"])
def test_lr_gets_the_learning_rate_fix_with_the_students_value(case: str) -> None:
    hint = hint_for(case)
    value = OBSERVED[case][0].split("lr=")[1].rstrip(")")

    assert "`learning_rate=`, not `lr=`" in hint
    assert f"learning_rate={value}" in hint


@pytest.mark.parametrize("case", ["input_int", "input_shape_int"])
def test_an_integer_shape_gets_the_tuple_fix(case: str) -> None:
    hint = hint_for(case)

    assert "must be a tuple" in hint
    assert "`shape=(13,)`" in hint


@pytest.mark.parametrize("case", ["np_utils_import", "np_utils_attribute"])
def test_np_utils_gets_keras_utils_to_categorical(case: str) -> None:
    assert "`keras.utils.to_categorical`" in hint_for(case)


@pytest.mark.parametrize(("case", "method"), [("fit_generator", "fit"), ("evaluate_generator", "evaluate"), ("predict_generator", "predict")])
def test_the_generator_methods_point_to_the_plain_ones(case: str, method: str) -> None:
    hint = hint_for(case)

    assert f"`model.{method}_generator`" in hint
    assert f"`model.{method}(...)`" in hint
    assert "generators" in hint


def test_saving_without_an_extension_asks_for_a_keras_file_name() -> None:
    assert '`model.save("mymodel.keras")`' in hint_for("save_without_extension")


@pytest.mark.parametrize(
    ("case", "cls"), [("lowercase_adam", "Adam"), ("lowercase_rmsprop", "RMSprop"), ("lowercase_import", "Adam")]
)
def test_a_lowercase_optimizer_gets_its_class_name(case: str, cls: str) -> None:
    assert f"`tf.keras.optimizers.{cls}(...)`" in hint_for(case)


@pytest.mark.parametrize("case", ["image_data_generator_import", "image_data_generator_attribute"])
def test_image_data_generator_is_imported_from_tensorflow_keras(case: str) -> None:
    assert "`from tensorflow.keras.preprocessing.image import ImageDataGenerator`" in hint_for(case)


def test_predict_classes_becomes_an_argmax_of_predict() -> None:
    assert "`np.argmax(model.predict(x), axis=1)`" in hint_for("predict_classes")


@pytest.mark.parametrize("case", ["sys_exit", "sys_exit_0"])
def test_system_exit_asks_to_remove_the_call(case: str) -> None:
    hint = hint_for(case)

    assert "`sys.exit()`" in hint and "remove" in hint


@pytest.mark.parametrize("case", sorted(OBSERVED))
def test_every_hint_is_one_sentence(case: str) -> None:
    hint = hint_for(case)

    assert hint.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", hint), hint


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ValueError", "shapes do not match"),
        ("NameError", "name 'y' is not defined"),
        ("AttributeError", "'Sequential' object has no attribute 'fit_gen'"),
        ("AttributeError", "module 'numpy' has no attribute 'adam'"),
        ("KeyError", "'lr'"),
        ("", ""),
    ],
)
def test_unknown_errors_get_no_hint(name: str, value: str) -> None:
    assert keras3_hint(name, value) == ""


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ValueError", "Unrecognized keyword arguments passed to Adam: {'lr': 0.01, 'decay': 0.0}", "learning_rate=0.01"),
        ("TypeError", "__init__() got an unexpected keyword argument 'lr'", "learning_rate=0.001"),
        ("ValueError", "Could not convert 13 to a shape", "`shape=(13,)`"),
        ("ValueError", "Invalid filepath extension: use a `.keras` extension. Received: filepath=model", "mymodel.keras"),
    ],
)
def test_a_reworded_message_still_matches(name: str, value: str, expected: str) -> None:
    assert expected in keras3_hint(name, value)


def test_a_module_fetched_by_a_shell_command_gets_the_offline_explanation() -> None:
    hint = keras3_hint("ModuleNotFoundError", "No module named 'helper_utils'")

    assert "`helper_utils`" in hint and "`!git clone`" in hint


def test_reading_command_line_arguments_is_explained() -> None:
    # int(sys.argv[1]) in a kernel: sys.argv is [".../ipykernel_launcher.py", "-f", ".../kernel.json"]
    hint = keras3_hint("ValueError", "invalid literal for int() with base 10: '-f'")

    assert "sys.argv" in hint
