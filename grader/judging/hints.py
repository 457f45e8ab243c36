"""One-sentence fixes for the errors that Keras-2 code raises under Keras 3.

Students copy Keras-2 code (``lr=``, ``fit_generator``, ``keras.utils.np_utils``, ...) that fails under
the Keras 3 and TensorFlow 2 the notebooks run with. Each rule recognises one such failure by the
exception's name and a distinctive part of its message, as Keras 3.15 and TensorFlow 2.21 word it, and
says how to fix it in the exercise's terms.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

# Keras 3's optimizer classes, by the lowercase names Keras 2 also accepted.
OPTIMIZERS = {
    name.lower(): name
    for name in ("Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "Nadam", "RMSprop", "SGD", "Ftrl")
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A failure: the exception names it comes with, a pattern its message matches, and the fix it calls for."""

    errors: frozenset[str]
    pattern: re.Pattern[str]
    fix: Callable[[re.Match[str]], str]


def _learning_rate(m: re.Match[str]) -> str:
    value = m["value"].strip() if m["value"] else "0.001"
    return (
        f"Keras 3 optimizers take `learning_rate=`, not `lr=`: write `learning_rate={value}`, "
        f"as in `tf.keras.optimizers.Adam(learning_rate={value})`."
    )


def _shape(m: re.Match[str]) -> str:
    n = m["value"]
    if not n.isdigit():
        return "A shape must be a tuple: write it as `shape=(13,)` or `shape=(32, 32, 3)`, with the comma for one dimension."
    return (
        f"A shape must be a tuple, not a number: write `shape=({n},)` (or `input_shape=({n},)`), "
        f"with the comma, since `{n}` and `({n})` are both just the integer {n}."
    )


def _to_categorical(m: re.Match[str]) -> str:
    return (
        "Keras 3 has no `keras.utils.np_utils`: use `keras.utils.to_categorical` "
        "(`from tensorflow.keras.utils import to_categorical`)."
    )


def _generator(m: re.Match[str]) -> str:
    method = m["method"]
    return (
        f"Keras 3 removed `model.{method}_generator`: call `model.{method}(...)`, "
        "which takes generators and `Sequence`s directly."
    )


def _save(m: re.Match[str]) -> str:
    return 'Keras 3 saves a model only to a file name ending in `.keras`: write `model.save("mymodel.keras")`.'


def _optimizer_class(m: re.Match[str]) -> str:
    cls = OPTIMIZERS[m["name"].lower()]
    return (
        f"Keras 3 optimizers are classes with capitalised names: write `tf.keras.optimizers.{cls}(...)`, "
        f"not `{m['name']}(...)`."
    )


def _image_data_generator(m: re.Match[str]) -> str:
    return (
        "Keras 3's `keras.preprocessing.image` has no `ImageDataGenerator`: import it with "
        "`from tensorflow.keras.preprocessing.image import ImageDataGenerator`."
    )


def _predict_classes(m: re.Match[str]) -> str:
    return "Keras 3 removed `model.predict_classes`: use `np.argmax(model.predict(x), axis=1)`."


def _system_exit(m: re.Match[str]) -> str:
    return "The notebook calls `sys.exit()` (or raises `SystemExit`), which ends the cell with an error: remove that call."


def _missing_module(m: re.Match[str]) -> str:
    return (
        f"The grader runs your notebook offline with the exercise's packages only (TensorFlow, Keras, NumPy, "
        f"pandas, scikit-learn, matplotlib), and shell commands such as `!pip install` or `!git clone` are not "
        f"run, so `{m['module']}` cannot be imported: define what you need from it in the notebook itself."
    )


def _command_line(m: re.Match[str]) -> str:
    return (
        "A notebook gets no command-line arguments (`sys.argv` holds the kernel's own, such as `-f`): "
        "set the value in the code instead."
    )


RULES = (
    Rule(
        frozenset({"ValueError", "TypeError"}),
        re.compile(r"(?:recogni[sz]ed|unexpected keyword).*?['\"]lr['\"](?:\s*:\s*(?P<value>[^,}]+))?", re.I | re.S),
        _learning_rate,
    ),
    Rule(
        frozenset({"ValueError", "TypeError"}),
        re.compile(r"convert\s+'?(?P<value>[^'\s]*)'?\s+to\s+a\s+shape", re.I),
        _shape,
    ),
    Rule(
        frozenset({"ModuleNotFoundError", "ImportError", "AttributeError"}),
        re.compile(r"\bnp_utils\b"),
        _to_categorical,
    ),
    Rule(
        frozenset({"AttributeError"}),
        re.compile(r"has no attribute '(?P<method>fit|evaluate|predict)_generator'"),
        _generator,
    ),
    Rule(
        frozenset({"ValueError"}),
        re.compile(r"(?:invalid\s+)?filepath\s+extension.*\.keras", re.I | re.S),
        _save,
    ),
    Rule(
        frozenset({"AttributeError", "ImportError"}),
        re.compile(
            r"^(?=.*\boptimizers\b).*?(?:has no attribute|cannot import name) '(?P<name>"
            + "|".join(sorted(OPTIMIZERS))
            + r")'",
            re.S,
        ),
        _optimizer_class,
    ),
    Rule(
        frozenset({"AttributeError", "ImportError", "ModuleNotFoundError"}),
        re.compile(r"\bImageDataGenerator\b"),
        _image_data_generator,
    ),
    Rule(
        frozenset({"AttributeError"}),
        re.compile(r"has no attribute 'predict_classes'"),
        _predict_classes,
    ),
    Rule(frozenset({"SystemExit"}), re.compile(r""), _system_exit),
    Rule(frozenset({"ModuleNotFoundError"}), re.compile(r"No module named '(?P<module>[\w.]{1,100})'"), _missing_module),
    Rule(frozenset({"ValueError"}), re.compile(r"'-f'"), _command_line),
)
HINTED_CHARS = 2000  # of an error message, what the rules read


def keras3_hint(error_name: str, error_value: str) -> str:
    """The fix for a Keras-2 habit that raised ``error_name: error_value`` under Keras 3; "" when none is known."""
    error_value = error_value[:HINTED_CHARS]
    for rule in RULES:
        if error_name in rule.errors:
            match = rule.pattern.search(error_value)
            if match is not None:
                return rule.fix(match)
    return ""


# An exception as Python prints it: ``TypeError: ...``, ``keras.src.saving.X.SomeError: ...``, or a traceback.
_EXCEPTION = re.compile(
    r"(?<![\w.])(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Warning)\b\s*:|\bTraceback \(most recent call",
)


def quotes_exception(text: str) -> bool:
    """Whether ``text`` quotes a raw exception (``TypeError: ...``, a traceback) rather than the grader's own words."""
    return bool(_EXCEPTION.search(text))


def unreadable_model(raw: str) -> str:
    """Why the grader could not read a saved model back, for a student, from the raw error of loading it.

    The evaluator reloads a model without running any of the notebook's code (Keras's safe mode), so a
    Lambda layer or a class defined in the notebook cannot be rebuilt however it is registered.
    """
    if not quotes_exception(raw):
        return raw  # the grader's own words ("no saved model was found for this fit")
    base = "the grader could not read this model back from the file it was saved to"
    if re.search(r"\blambda\b|safe_mode|unsafe", raw, re.I):
        return (
            f"{base}: it has a Lambda layer, whose Python code the grader does not run; use Keras's built-in "
            "layers instead (e.g. tf.keras.layers.Rescaling(1/255) rather than a Lambda that divides by 255)"
        )
    if re.search(r"deserializ|from_config|get_config|custom|unknown|not found|register", raw, re.I):
        return (
            f"{base}: one of its parts (a layer, regularizer, loss or activation) is a class or function defined "
            "in your notebook, and the grader does not run your notebook's code when it reads a model; build the "
            "model from Keras's built-in layers and tf.keras.regularizers.L1 / L2"
        )
    return f"{base}; a model built from Keras's built-in layers and regularizers can always be read back"
