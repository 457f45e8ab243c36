"""The labelled variant corpus that ``python -m reference calibrate`` grades.

A *model spec* is one code cell that builds, trains and evaluates one model the way a student might,
together with the truth about it, declared here by hand and never measured: which weight penalty it
really has, whether it is a CNN, whether it is a properly trained answer, whether its L1 penalty
should show as sparsity. Specs are gathered into a few *family notebooks* (one for the recap, two for
the practice) that the grader executes like any submission.

A *variant* is a submission made of some of those cells: a recap half (its L1 and L2 models, or the
distributed code that stops on ``NameError``) and a practice half (its L1 and L2 CNNs). Its evidence is
the family notebooks' evidence restricted to its cells, exactly what a notebook made of those cells
gives, up to the random state each fit starts from. The verdict every check must reach on a variant
follows from the truths of its cells (:func:`expected`).
"""

from __future__ import annotations

import dataclasses
import itertools

import nbformat

from grader.judging.checks import CHECK_IDS
from grader.records import CNN, RECAP, Part


@dataclasses.dataclass(frozen=True)
class Spec:
    """One trained model, with the truth about it."""

    name: str
    part: Part  # recap | cnn
    code: str
    penalty: str | None  # the kernel (weight) penalty it really has: l1 | l2 | l1_l2 | None
    cnn: bool = False  # has a convolution layer (the cnn part only)
    sound: bool | None = True  # a properly trained answer whose test metric should pass; None: no verdict
    sparse: bool | None = None  # L1 CNNs: should its weights show L1 sparsity; None: no verdict
    leaks: bool = False  # trained on test-set rows
    cost: float = 1.0  # training time relative to the reference model of its part


# ------------------------------------------------------------------------------------------------
# Code of the cells
# ------------------------------------------------------------------------------------------------

RECAP_SETUP = """\
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

data_url = "http://lib.stat.cmu.edu/datasets/boston"
raw_df = pd.read_csv(data_url, sep=r"\\s+", skiprows=22, header=None)
X = np.hstack([raw_df.values[::2, :], raw_df.values[1::2, :2]])
y = raw_df.values[1::2, 2]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=42)
"""

# The distributed code's first lines: the target is assigned to ``Y`` and used as ``y``.
RECAP_CRASH = RECAP_SETUP.replace("from sklearn.preprocessing import StandardScaler\n", "").replace(
    "\ny = raw_df", "\nY = raw_df"
)

CIFAR_SETUP = """\
import numpy as np
import tensorflow as tf

(x_train_raw, y_train_c), (x_test_raw, y_test_c) = tf.keras.datasets.cifar10.load_data()
x_train = x_train_raw.astype('float32') / 255
x_test = x_test_raw.astype('float32') / 255
channel_mean = x_train.mean(axis=(0, 1, 2))
channel_std = x_train.std(axis=(0, 1, 2))
x_train_std = (x_train - channel_mean) / channel_std
x_test_std = (x_test - channel_mean) / channel_std
"""


def _kw(where: str, reg: str | None) -> str:
    return f", {where}_regularizer={reg}" if reg else ""


def recap_sequential(
    out: str | None = None, hidden: str | None = None, where: str = "kernel", epochs: int = 100,
    scaled: bool = False, leak: bool = False,
) -> str:
    prep = (
        "scaler = StandardScaler().fit(X_train)\nXtr, Xte = scaler.transform(X_train), scaler.transform(X_test)\n"
        if scaled
        else "Xtr, Xte = X_train, X_test\n"
    )
    fit_x, fit_y = ("np.vstack([Xtr, Xte])", "np.concatenate([y_train, y_test])") if leak else ("Xtr", "y_train")
    return (
        prep
        + "model = tf.keras.models.Sequential()\n"
        + f"model.add(tf.keras.layers.Dense(10, input_dim=Xtr.shape[1], activation='relu'{_kw(where, hidden)}))\n"
        + f"model.add(tf.keras.layers.Dense(1{_kw(where, out)}))\n"
        + "model.compile(loss='mean_squared_error', optimizer='adam', metrics=['mean_squared_error'])\n"
        + f"model.fit({fit_x}, {fit_y}, epochs={epochs}, batch_size=32, verbose=0)\n"
        + "mse, _ = model.evaluate(Xte, y_test, verbose=0)\n"
    )


RECAP_FUNCTIONAL = """\
inputs = tf.keras.Input(shape=(X_train.shape[1],))
hidden = tf.keras.layers.Dense(10, activation='relu')(inputs)
outputs = tf.keras.layers.Dense(1, kernel_regularizer=tf.keras.regularizers.l1(1e-5))(hidden)
model = tf.keras.Model(inputs, outputs)
model.compile(loss='mean_squared_error', optimizer='adam', metrics=['mean_squared_error'])
model.fit(X_train, y_train, epochs=100, batch_size=32, verbose=0)
mse, _ = model.evaluate(X_test, y_test, verbose=0)
"""

RECAP_SUBCLASS = """\
class HousingNet(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = tf.keras.layers.Dense(10, activation='relu')
        self.price = tf.keras.layers.Dense(1, kernel_regularizer=tf.keras.regularizers.L2(1e-5))

    def call(self, inputs):
        return self.price(self.hidden(inputs))

model = HousingNet()
model.compile(loss='mean_squared_error', optimizer='adam', metrics=['mean_squared_error'])
model.fit(X_train, y_train, epochs=100, batch_size=32, verbose=0)
mse, _ = model.evaluate(X_test, y_test, verbose=0)
"""


def cnn_sequential(
    reg: str | None, where: str = "kernel", epochs: int = 10, arch: str = "task2"
) -> str:
    kw = _kw(where, reg)
    if arch == "task2":  # the Multiclass Classification Exercise's Task 2 CNN
        layers = [
            f"tf.keras.layers.Conv2D(32, (3, 3), activation='relu'{kw})",
            "tf.keras.layers.MaxPooling2D((2, 2))",
            "tf.keras.layers.Flatten()",
            f"tf.keras.layers.Dense(128, activation='relu'{kw})",
            f"tf.keras.layers.Dense(10, activation='softmax'{kw})",
        ]
    elif arch == "task3":  # a deeper CNN, as in that exercise's Task 3
        layers = [
            f"tf.keras.layers.Conv2D(32, (3, 3), activation='relu', padding='same'{kw})",
            "tf.keras.layers.MaxPooling2D((2, 2))",
            f"tf.keras.layers.Conv2D(64, (3, 3), activation='relu'{kw})",
            "tf.keras.layers.MaxPooling2D((2, 2))",
            "tf.keras.layers.Flatten()",
            f"tf.keras.layers.Dense(64, activation='relu'{kw})",
            f"tf.keras.layers.Dense(10, activation='softmax'{kw})",
        ]
    elif arch == "mlp":  # the dense-only network, no convolution
        layers = [
            "tf.keras.layers.Flatten()",
            f"tf.keras.layers.Dense(128, activation='relu'{kw})",
            f"tf.keras.layers.Dense(10, activation='softmax'{kw})",
        ]
    else:
        raise ValueError(arch)
    body = ",\n    ".join(["tf.keras.Input(shape=(32, 32, 3))", *layers])
    return (
        f"model = tf.keras.models.Sequential([\n    {body}\n])\n"
        "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
        f"model.fit(x_train, y_train_c, epochs={epochs}, verbose=0)\n"
        "test_loss, test_acc = model.evaluate(x_test, y_test_c, verbose=0)\n"
    )


CNN_FUNCTIONAL = """\
penalty = tf.keras.regularizers.L1(1e-4)
inputs = tf.keras.Input(shape=(32, 32, 3))
h = tf.keras.layers.Rescaling(1.0 / 255)(inputs)
h = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=penalty)(h)
h = tf.keras.layers.MaxPooling2D((2, 2))(h)
h = tf.keras.layers.Flatten()(h)
h = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=penalty)(h)
outputs = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=penalty)(h)
model = tf.keras.Model(inputs, outputs)
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train_raw, y_train_c, epochs=10, verbose=0)
test_loss, test_acc = model.evaluate(x_test_raw, y_test_c, verbose=0)
"""

CNN_SUBCLASS = """\
class SmallCNN(tf.keras.Model):
    def __init__(self, strength=1e-4):
        super().__init__()
        l2 = tf.keras.regularizers.l2
        self.conv = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=l2(strength))
        self.pool = tf.keras.layers.MaxPooling2D((2, 2))
        self.flatten = tf.keras.layers.Flatten()
        self.hidden = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=l2(strength))
        self.classes = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=l2(strength))

    def call(self, inputs):
        return self.classes(self.hidden(self.flatten(self.pool(self.conv(inputs)))))

model = SmallCNN()
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train_std, y_train_c, epochs=10, verbose=0)
test_loss, test_acc = model.evaluate(x_test_std, y_test_c, verbose=0)
"""


def _l1(s: str) -> str:
    return f"tf.keras.regularizers.L1({s})"


def _l2(s: str) -> str:
    return f"tf.keras.regularizers.L2({s})"


# ------------------------------------------------------------------------------------------------
# The specs
# ------------------------------------------------------------------------------------------------

RECAP_SPECS: tuple[Spec, ...] = (
    # Correct: the minimal fix, other strengths, both layers, other APIs, standardised inputs.
    Spec("recap.l1", RECAP, recap_sequential(out=_l1("1e-5")), "l1"),
    Spec("recap.l2", RECAP, recap_sequential(out=_l2("1e-5")), "l2"),
    Spec("recap.l1_both_layers", RECAP, recap_sequential(out=_l1("1e-5"), hidden=_l1("1e-5")), "l1"),
    Spec("recap.l2_both_layers", RECAP, recap_sequential(out=_l2("1e-5"), hidden=_l2("1e-5")), "l2"),
    Spec("recap.l1_1e-3", RECAP, recap_sequential(out=_l1("1e-3"), hidden=_l1("1e-3")), "l1"),
    Spec("recap.l2_1e-3", RECAP, recap_sequential(out=_l2("1e-3"), hidden=_l2("1e-3")), "l2"),
    Spec("recap.l1_functional", RECAP, RECAP_FUNCTIONAL, "l1"),
    Spec("recap.l2_subclassed", RECAP, RECAP_SUBCLASS, "l2"),
    Spec("recap.l1_standardised", RECAP, recap_sequential(out=_l1("1e-5"), scaled=True), "l1"),
    Spec("recap.l2_standardised", RECAP, recap_sequential(out=_l2("1e-5"), scaled=True), "l2"),
    # Wrong: the distributed activity penalty, none, bias only, far too strong, undertrained, both kinds.
    Spec("recap.activity_l2", RECAP, recap_sequential(out="tf.keras.regularizers.L2(1e-5)", where="activity"), None),
    Spec("recap.none", RECAP, recap_sequential(), None),
    Spec("recap.bias_l1", RECAP, recap_sequential(out=_l1("1e-5"), where="bias"), None),
    Spec("recap.l1_too_strong", RECAP, recap_sequential(out=_l1("100.0"), hidden=_l1("100.0")), "l1", sound=False),
    Spec("recap.l2_too_strong", RECAP, recap_sequential(out=_l2("100.0"), hidden=_l2("100.0")), "l2", sound=False),
    Spec("recap.l1_undertrained", RECAP, recap_sequential(out=_l1("1e-5"), epochs=2), "l1", sound=False, cost=0.05),
    Spec("recap.l2_undertrained", RECAP, recap_sequential(out=_l2("1e-5"), epochs=2), "l2", sound=False, cost=0.05),
    Spec("recap.l1_l2", RECAP, recap_sequential(out="tf.keras.regularizers.L1L2(l1=1e-5, l2=1e-5)"), "l1_l2"),
    # Correct penalty, but trained on the test rows too: its MSE is not a fair measurement (no verdict).
    Spec("recap.l1_leaky", RECAP, recap_sequential(out=_l1("1e-5"), leak=True), "l1", sound=None, leaks=True),
)

CNN_SPECS: tuple[Spec, ...] = (
    # Correct: the reference, other APIs and input scalings, other valid strengths, a deeper CNN.
    Spec("cnn.l1", CNN, cnn_sequential(_l1("1e-4")), "l1", cnn=True, sparse=True),
    Spec("cnn.l2", CNN, cnn_sequential(_l2("1e-4")), "l2", cnn=True),
    Spec("cnn.l1_functional_rescaling", CNN, CNN_FUNCTIONAL, "l1", cnn=True, sparse=True),
    Spec("cnn.l2_subclassed_standardised", CNN, CNN_SUBCLASS, "l2", cnn=True),
    Spec("cnn.l1_3e-5", CNN, cnn_sequential(_l1("3e-5")), "l1", cnn=True, sparse=True),
    Spec("cnn.l1_3e-4", CNN, cnn_sequential(_l1("3e-4")), "l1", cnn=True, sparse=True),
    Spec("cnn.l2_3e-4", CNN, cnn_sequential(_l2("3e-4")), "l2", cnn=True),
    Spec("cnn.l1_deeper", CNN, cnn_sequential(_l1("1e-4"), arch="task3"), "l1", cnn=True, sparse=True, cost=1.3),
    Spec("cnn.l2_deeper", CNN, cnn_sequential(_l2("1e-4"), arch="task3"), "l2", cnn=True, cost=1.3),
    # Wrong: no penalty, activity or bias penalties, both kinds, an L1 too weak to do anything, far too
    # strong, undertrained, and the dense-only network.
    Spec("cnn.none", CNN, cnn_sequential(None), None, cnn=True),
    Spec("cnn.activity_l1", CNN, cnn_sequential(_l1("1e-4"), where="activity"), None, cnn=True),
    Spec("cnn.bias_l1", CNN, cnn_sequential(_l1("1e-4"), where="bias"), None, cnn=True),
    Spec("cnn.l1_l2", CNN, cnn_sequential("tf.keras.regularizers.L1L2(l1=1e-4, l2=1e-4)"), "l1_l2", cnn=True),
    Spec("cnn.l1_1e-7", CNN, cnn_sequential(_l1("1e-7")), "l1", cnn=True, sparse=False),
    # Far too strong: every weight is wiped out. That is collapse, not the sparsity L1 is used for.
    Spec("cnn.l1_too_strong", CNN, cnn_sequential(_l1("1e-1")), "l1", cnn=True, sound=False, sparse=False),
    Spec("cnn.l2_too_strong", CNN, cnn_sequential(_l2("1.0")), "l2", cnn=True, sound=False),
    Spec("cnn.l1_undertrained", CNN, cnn_sequential(_l1("1e-4"), epochs=1), "l1", cnn=True, sound=False, cost=0.12),
    Spec("cnn.l2_undertrained", CNN, cnn_sequential(_l2("1e-4"), epochs=1), "l2", cnn=True, sound=False, cost=0.12),
    Spec("cnn.l1_mlp", CNN, cnn_sequential(_l1("1e-4"), arch="mlp"), "l1", sound=False, cost=0.3),
    Spec("cnn.l2_mlp", CNN, cnn_sequential(_l2("1e-4"), arch="mlp"), "l2", sound=False, cost=0.3),
)

SPECS: dict[str, Spec] = {s.name: s for s in RECAP_SPECS + CNN_SPECS}
CRASH = "recap.distributed_nameerror"  # the distributed first cell, unfixed: no recap model at all

# Halves of a submission, as (L1 slot, L2 slot) or fewer cells. Correct halves first.
RECAP_HALVES: tuple[tuple[str, ...], ...] = (
    ("recap.l1", "recap.l2"),
    ("recap.l1_both_layers", "recap.l2_both_layers"),
    ("recap.l1_1e-3", "recap.l2_1e-3"),
    ("recap.l1_functional", "recap.l2_subclassed"),
    ("recap.l1_standardised", "recap.l2_standardised"),
    ("recap.l1", "recap.l2_1e-3"),
    ("recap.l1_standardised", "recap.l2"),
    ("recap.activity_l2",),
    ("recap.none", "recap.l2"),
    ("recap.bias_l1", "recap.l2"),
    ("recap.l1_too_strong", "recap.l2"),
    ("recap.l1", "recap.l2_too_strong"),
    ("recap.l1_undertrained", "recap.l2_undertrained"),
    ("recap.l1_l2", "recap.l2"),
    ("recap.l2_1e-3", "recap.l2"),
    ("recap.l1_leaky", "recap.l2"),
    (CRASH,),
)

CNN_HALVES: tuple[tuple[str, ...], ...] = (
    ("cnn.l1", "cnn.l2"),
    ("cnn.l1_functional_rescaling", "cnn.l2_subclassed_standardised"),
    ("cnn.l1_3e-5", "cnn.l2"),
    ("cnn.l1_3e-4", "cnn.l2_3e-4"),
    ("cnn.l1_deeper", "cnn.l2_deeper"),
    ("cnn.l1", "cnn.l2_deeper"),
    ("cnn.l1_3e-5", "cnn.l2_3e-4"),
    ("cnn.l1_deeper", "cnn.l2_subclassed_standardised"),
    ("cnn.none", "cnn.l2"),
    ("cnn.activity_l1", "cnn.l2"),
    ("cnn.bias_l1", "cnn.l2"),
    ("cnn.l1_l2", "cnn.l2"),
    ("cnn.l1_1e-7", "cnn.l2"),
    ("cnn.l1_too_strong", "cnn.l2"),
    ("cnn.l1", "cnn.l2_too_strong"),
    ("cnn.l1_too_strong", "cnn.l2_too_strong"),
    ("cnn.l1_undertrained", "cnn.l2_undertrained"),
    ("cnn.l1_mlp", "cnn.l2_mlp"),
    ("cnn.l1_mlp", "cnn.l2"),
    ("cnn.l2_3e-4", "cnn.l2"),
    ("cnn.l1", "cnn.none"),
    ("cnn.l1_3e-4", "cnn.l1"),
    ("cnn.l1_undertrained", "cnn.l2"),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    recap: tuple[str, ...]
    practice: tuple[str, ...]


def variants(count: int = 85) -> list[Variant]:
    """``count`` distinct submissions, pairing recap and practice halves in turn (17 x 23 pairs are all distinct)."""
    pairs = itertools.islice(zip(itertools.cycle(RECAP_HALVES), itertools.cycle(CNN_HALVES)), count)
    out = []
    for i, (recap, practice) in enumerate(pairs):
        name = f"v{i:02d}:" + "+".join(s.split(".", 1)[1] for s in recap + practice)
        out.append(Variant(name, recap, practice))
    return out


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------


def _answer(cells: tuple[str, ...], kind: str, cnn: bool) -> Spec | None:
    """The cell a correct grader must take as the ``kind`` answer: the last one with only that weight penalty."""
    chosen = [SPECS[c] for c in cells if c in SPECS and SPECS[c].penalty == kind and (SPECS[c].cnn or not cnn)]
    return chosen[-1] if chosen else None


def expected(v: Variant) -> dict[str, bool | None]:
    """The verdict each check must reach on ``v`` (``None``: the corpus states none), from the specs' truths."""
    out: dict[str, bool | None] = {}
    out["recap.runs"] = CRASH not in v.recap
    for kind in ("l1", "l2"):
        recap = _answer(v.recap, kind, cnn=False)
        cnn = _answer(v.practice, kind, cnn=True)
        out[f"recap.{kind}_regularizer"] = recap is not None
        out[f"recap.{kind}_mse"] = False if recap is None else recap.sound
        out[f"cnn.{kind}_regularizer"] = cnn is not None
        out[f"cnn.{kind}_accuracy"] = False if cnn is None else cnn.sound
    l1_cnn = _answer(v.practice, "l1", cnn=True)
    out["cnn.l1_sparsity"] = False if l1_cnn is None else l1_cnn.sparse
    out["recap.l1_sparsity"] = None  # informational by design: no verdict is asked of it
    out["integrity.reported_metrics"] = True  # no cell of the corpus reports a metric it did not compute
    out["integrity.no_test_leakage"] = not any(SPECS[c].leaks for c in v.recap + v.practice if c in SPECS)
    assert set(out) == set(CHECK_IDS)
    return out


# ------------------------------------------------------------------------------------------------
# Family notebooks
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """One notebook of the corpus: which spec each code cell trains (by cell index)."""

    name: str
    notebook: nbformat.NotebookNode
    cell_of: dict[str, int]  # spec name (or a setup cell's name) -> cell index
    setup: tuple[int, ...]  # the set-up cells every variant drawing on this family includes

    @property
    def cost(self) -> float:
        return sum(SPECS[n].cost * (1.0 if SPECS[n].part == RECAP else 8.0) for n in self.cell_of if n in SPECS)


def family_notebook(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    """A notebook of ``cells`` whose bytes depend on their contents only: each cell's id is its index
    (nbformat draws random ids), so ``calibrate --work`` finds the executions of an earlier run."""
    nb = nbformat.v4.new_notebook()
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i}"
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def families(practice_notebooks: int = 2) -> list[Family]:
    """The recap family, and the practice specs split into notebooks of about equal training time."""
    md = nbformat.v4.new_markdown_cell
    code = nbformat.v4.new_code_cell
    out = []
    # The crash cell comes first, while `y` is still undefined in the kernel.
    cells = [md("## Recap on Regularization (calibration corpus)"), code(RECAP_CRASH), code(RECAP_SETUP)]
    cell_of = {CRASH: 1, "recap.setup": 2}
    for spec in RECAP_SPECS:
        cell_of[spec.name] = len(cells)
        cells.append(code(spec.code))
    out.append(Family("recap", family_notebook(cells), cell_of, setup=(2,)))
    groups: list[list[Spec]] = [[] for _ in range(practice_notebooks)]
    for spec in sorted(CNN_SPECS, key=lambda s: -s.cost):  # longest first, each to the lightest notebook
        min(groups, key=lambda g: sum(s.cost for s in g)).append(spec)
    for i, group in enumerate(groups):
        cells = [md("## Practice (calibration corpus)"), code(CIFAR_SETUP)]
        cell_of = {"cnn.setup": 1}
        for spec in group:
            cell_of[spec.name] = len(cells)
            cells.append(code(spec.code))
        out.append(Family(f"{CNN}{i + 1}", family_notebook(cells), cell_of, setup=(1,)))
    return out


def home(fams: list[Family]) -> dict[str, Family]:
    """Spec (or set-up cell) name -> the family notebook that holds its cell."""
    return {name: fam for fam in fams for name in fam.cell_of}
