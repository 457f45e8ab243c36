"""A labelled corpus of the ways students really write this exercise, beyond the reference solution's.

Each *pattern* is one code cell that builds, compiles, trains and then honestly evaluates one model on
the test split prepared the way it prepared its training data, together with the truth about it,
declared here by hand and never measured:

- ``penalty``: the kernel (weight) penalty its training really applied (``l1``, ``l2``, ``l1_l2`` or
  ``None``). A regularizer attached to a layer after the layer was built, or a custom training loop
  that never adds ``model.losses``, trains no penalty even though the layer carries one;
- ``cnn``: it has a convolution layer; ``dataset``: ``boston`` or ``cifar10``;
- ``leaks``: it was trained on test-set rows;
- ``reproducible``: the grader is expected to recompute the metric the cell's own ``evaluate`` returned.

Patterns are grouped by *topic*: ``rebuild`` (a penalty set on layers that are already built, and the
ways to rebuild them so that it counts), ``training`` (training paths other than ``fit`` on arrays:
``tf.data``, generators, ``PyDataset``, ``ImageDataGenerator``, ``train_on_batch``, ``GradientTape``),
``preprocessing`` (input and label preparations other than per-channel scaling), ``integrity`` (test
rows in the training data), ``recap`` (the Boston Housing model trained in those other ways) and
``mechanisms`` (a weight penalty applied by other means than a built-in regularizer on a built-in layer:
regularizers, layers and models of the student's own, ``add_loss``, penalties written by hand into a
``GradientTape`` loop, XLA-compiled steps; ``Lambda`` layers and named or dict inputs). A weight penalty
is what training adds to a weight's gradient: L1 whatever adds ``λ·sign(w)``, L2 whatever adds ``2λ·w``,
whatever the API or the name says; a penalty the gradient never sees (computed outside the tape, a
custom ``train_step`` that leaves ``model.losses`` out, a regularizer returning a constant) is none.

The grader executes them in *family notebooks* (:func:`families`): one for the Boston Housing
patterns, one per topic for the CIFAR-10 ones, each a set-up cell followed by one cell per pattern.
Every CIFAR-10 model trains for 1 or 2 epochs on the served training images and every Boston model
for at most 30 epochs, so the families stay cheap on the ``tiny`` profile. ``tests/test_student_patterns.py``
grades them and compares what the grader found with these truths, and ``python -m reference calibrate``
grades each one as a submission of its own (set-up cell plus that cell) and counts how often the checks
its truths decide (:func:`expected`) are wrong.
"""

from __future__ import annotations

import dataclasses

import nbformat

from grader.judging.checks import CHECK_IDS
from grader.records import CNN, RECAP, Part
from reference.corpus import CIFAR_SETUP, RECAP_SETUP, family_notebook

TOPICS = ("rebuild", "training", "preprocessing", "integrity", "recap", "mechanisms")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One student cell that trains and evaluates one model, with the truth about it."""

    name: str
    topic: str  # rebuild | training | preprocessing | integrity | recap | mechanisms
    code: str
    penalty: str | None  # the kernel penalty its training really applied: l1 | l2 | l1_l2 | None
    cnn: bool
    dataset: str  # boston | cifar10
    leaks: bool = False  # trained on test-set rows
    reproducible: bool = True  # the grader should recompute the metric the cell's evaluate returned

    @property
    def part(self) -> Part:
        """The part of the exercise it answers: ``recap`` (Boston Housing) or ``cnn`` (CIFAR-10)."""
        return RECAP if self.dataset == "boston" else CNN

    @property
    def correct(self) -> bool:
        """A correct answer: exactly one kind of weight penalty really trained, and no test rows in training."""
        return self.penalty in ("l1", "l2") and not self.leaks

    @property
    def kinds(self) -> set[str]:
        """The kernel penalty kinds a grader should report for the trained model."""
        return {self.penalty} if self.penalty else set()


# ------------------------------------------------------------------------------------------------
# Building blocks of the cells
# ------------------------------------------------------------------------------------------------

L1 = "tf.keras.regularizers.L1(1e-4)"
L2 = "tf.keras.regularizers.L2(1e-4)"
L1L2 = "tf.keras.regularizers.L1L2(l1=1e-4, l2=1e-4)"
RECAP_L1 = "tf.keras.regularizers.L1(1e-5)"
RECAP_L2 = "tf.keras.regularizers.L2(1e-5)"
IMAGE_INPUT = "tf.keras.Input(shape=(32, 32, 3))"

CNN_COMPILE = "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
CNN_EVALUATE = "test_loss, test_acc = model.evaluate(x_test, y_test_c, verbose=0)\n"
RECAP_COMPILE = "model.compile(loss='mean_squared_error', optimizer='adam', metrics=['mean_squared_error'])\n"


def _kw(reg: str | None, where: str = "kernel") -> str:
    """The keyword argument that attaches ``reg`` to a layer (nothing for no regularizer)."""
    return f", {where}_regularizer={reg}" if reg else ""


def cnn(reg: str | None = None, where: str = "kernel", first: tuple[str, ...] = (IMAGE_INPUT,)) -> str:
    """``model = `` the Multiclass exercise's Task 2 CNN, with ``reg`` on every kernel-holding layer.

    ``first`` are the entries before the convolution: the input, and any preprocessing layers.
    """
    kw = _kw(reg, where)
    layers = [
        *first,
        f"tf.keras.layers.Conv2D(32, (3, 3), activation='relu'{kw})",
        "tf.keras.layers.MaxPooling2D((2, 2))",
        "tf.keras.layers.Flatten()",
        f"tf.keras.layers.Dense(128, activation='relu'{kw})",
        f"tf.keras.layers.Dense(10, activation='softmax'{kw})",
    ]
    body = ",\n    ".join(layers)
    return f"model = tf.keras.models.Sequential([\n    {body}\n])\n"


def housing(reg: str | None = None, where: str = "kernel") -> str:
    """``model = `` the recap's network (10 hidden units, one output), with ``reg`` on its output layer."""
    return (
        "model = tf.keras.models.Sequential([\n"
        "    tf.keras.Input(shape=(X_train.shape[1],)),\n"
        "    tf.keras.layers.Dense(10, activation='relu'),\n"
        f"    tf.keras.layers.Dense(1{_kw(reg, where)}),\n"
        "])\n"
    )


def _batches(x: str, y: str, seed: int = 0) -> str:
    """A shuffled, batched ``tf.data`` pipeline over the arrays named ``x`` and ``y``."""
    return (
        f"tf.data.Dataset.from_tensor_slices(({x}, {y}))"
        f".shuffle(len({x}), seed={seed}).batch(32).prefetch(tf.data.AUTOTUNE)"
    )


# ------------------------------------------------------------------------------------------------
# rebuild: a penalty set on layers that already exist
# ------------------------------------------------------------------------------------------------


def cnn_set_after_compile(reg: str) -> str:
    """The penalty assigned to every layer of a built, compiled model: no weight carries it."""
    return (
        cnn()
        + CNN_COMPILE
        + "for layer in model.layers:\n"
        + f"    layer.kernel_regularizer = {reg}\n"
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_set_on_functional(reg: str) -> str:
    """A functional model (built when created) given the penalty afterwards, then compiled: still none."""
    return (
        f"inputs = {IMAGE_INPUT}\n"
        "h = tf.keras.layers.Conv2D(32, (3, 3), activation='relu')(inputs)\n"
        "h = tf.keras.layers.MaxPooling2D((2, 2))(h)\n"
        "h = tf.keras.layers.Flatten()(h)\n"
        "h = tf.keras.layers.Dense(128, activation='relu')(h)\n"
        "outputs = tf.keras.layers.Dense(10, activation='softmax')(h)\n"
        "model = tf.keras.Model(inputs, outputs)\n"
        "for layer in model.layers:\n"
        "    if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):\n"
        f"        layer.kernel_regularizer = {reg}\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_clone_after_setting(reg: str) -> str:
    """The penalty assigned to built layers, then the model rebuilt with ``clone_model``: it counts."""
    return (
        cnn()
        + "for layer in model.layers:\n"
        + "    if hasattr(layer, 'kernel_regularizer'):\n"
        + f"        layer.kernel_regularizer = {reg}\n"
        + "model = tf.keras.models.clone_model(model)\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_from_config_after_setting(reg: str) -> str:
    """The penalty assigned to built layers, then the model rebuilt from its config: it counts."""
    return (
        cnn()
        + CNN_COMPILE
        + "for layer in model.layers:\n"
        + "    if hasattr(layer, 'kernel_regularizer'):\n"
        + f"        layer.kernel_regularizer = {reg}\n"
        + "model = tf.keras.Sequential.from_config(model.get_config())\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_set_before_build(reg: str) -> str:
    """The penalty assigned to layers created but not yet built, then the model built from them: it counts."""
    return (
        "layers = [\n"
        "    tf.keras.layers.Conv2D(32, (3, 3), activation='relu'),\n"
        "    tf.keras.layers.MaxPooling2D((2, 2)),\n"
        "    tf.keras.layers.Flatten(),\n"
        "    tf.keras.layers.Dense(128, activation='relu'),\n"
        "    tf.keras.layers.Dense(10, activation='softmax'),\n"
        "]\n"
        "for layer in layers:\n"
        "    if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):\n"
        f"        layer.kernel_regularizer = {reg}\n"
        f"model = tf.keras.Sequential([{IMAGE_INPUT}] + layers)\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_partial_constructors(reg: str) -> str:
    """Layer constructors with the penalty bound in by ``functools.partial``: set when each layer is created."""
    return (
        "import functools\n"
        f"Conv = functools.partial(tf.keras.layers.Conv2D, activation='relu', kernel_regularizer={reg})\n"
        f"Dense = functools.partial(tf.keras.layers.Dense, kernel_regularizer={reg})\n"
        "model = tf.keras.Sequential([\n"
        f"    {IMAGE_INPUT},\n"
        "    Conv(32, (3, 3)),\n"
        "    tf.keras.layers.MaxPooling2D((2, 2)),\n"
        "    tf.keras.layers.Flatten(),\n"
        "    Dense(128, activation='relu'),\n"
        "    Dense(10, activation='softmax'),\n"
        "])\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_clone_unused(reg: str) -> str:
    """The model cloned after the penalty was set, but the original (with no penalty) is the one trained."""
    return (
        cnn()
        + CNN_COMPILE
        + "for layer in model.layers:\n"
        + "    if hasattr(layer, 'kernel_regularizer'):\n"
        + f"        layer.kernel_regularizer = {reg}\n"
        + "regularized = tf.keras.models.clone_model(model)\n"
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def housing_set_after_compile(reg: str) -> str:
    """The recap model given its penalty after it was built and compiled: none is trained."""
    return (
        housing()
        + RECAP_COMPILE
        + f"model.layers[-1].kernel_regularizer = {reg}\n"
        + "model.fit(X_train, y_train, epochs=30, batch_size=32, verbose=0)\n"
        + "mse, _ = model.evaluate(X_test, y_test, verbose=0)\n"
    )


def housing_clone_after_setting(reg: str) -> str:
    """The recap model given its penalty after it was built, then rebuilt with ``clone_model``: it counts."""
    return (
        housing()
        + f"model.layers[-1].kernel_regularizer = {reg}\n"
        + "model = tf.keras.models.clone_model(model)\n"
        + RECAP_COMPILE
        + "model.fit(X_train, y_train, epochs=30, batch_size=32, verbose=0)\n"
        + "mse, _ = model.evaluate(X_test, y_test, verbose=0)\n"
    )


# ------------------------------------------------------------------------------------------------
# training: paths other than fit on arrays
# ------------------------------------------------------------------------------------------------


def cnn_fit_dataset(reg: str, where: str = "kernel") -> str:
    """``fit`` on a shuffled, batched, prefetched ``tf.data.Dataset`` of the scaled arrays."""
    return (
        f"train_ds = {_batches('x_train', 'y_train_c')}\n"
        + cnn(reg, where)
        + CNN_COMPILE
        + "model.fit(train_ds, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_fit_dataset_map(reg: str) -> str:
    """``fit`` on a ``tf.data.Dataset`` of the raw images whose ``.map`` divides them by 255."""
    return (
        "def to_unit(image, label):\n"
        "    return tf.cast(image, tf.float32) / 255.0, label\n"
        "train_ds = (tf.data.Dataset.from_tensor_slices((x_train_raw, y_train_c))\n"
        "            .shuffle(1000, seed=1).map(to_unit).batch(32).prefetch(tf.data.AUTOTUNE))\n"
        + cnn(reg)
        + CNN_COMPILE
        + "model.fit(train_ds, epochs=2, verbose=0)\n"
        + "test_loss, test_acc = model.evaluate(x_test_raw.astype('float32') / 255.0, y_test_c, verbose=0)\n"
    )


def cnn_fit_zipped(reg: str) -> str:
    """``fit`` on a dataset zipped from an images dataset and a labels dataset."""
    return (
        "images = tf.data.Dataset.from_tensor_slices(x_train)\n"
        "labels = tf.data.Dataset.from_tensor_slices(y_train_c)\n"
        "train_ds = tf.data.Dataset.zip((images, labels)).shuffle(1000, seed=2).batch(32)\n"
        + cnn(reg)
        + CNN_COMPILE
        + "model.fit(train_ds, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_fit_dict_dataset(reg: str) -> str:
    """A functional model with a named input, fit on a dataset yielding ``{name: images}`` and evaluated on a dict."""
    return (
        "inputs = tf.keras.Input(shape=(32, 32, 3), name='pixels')\n"
        f"h = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer={reg})(inputs)\n"
        "h = tf.keras.layers.MaxPooling2D((2, 2))(h)\n"
        "h = tf.keras.layers.Flatten()(h)\n"
        f"h = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer={reg})(h)\n"
        f"outputs = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer={reg})(h)\n"
        "model = tf.keras.Model(inputs, outputs)\n"
        "train_ds = tf.data.Dataset.from_tensor_slices(({'pixels': x_train}, y_train_c)).shuffle(1000, seed=3).batch(32)\n"
        + CNN_COMPILE
        + "model.fit(train_ds, epochs=2, verbose=0)\n"
        + "test_loss, test_acc = model.evaluate({'pixels': x_test}, y_test_c, verbose=0)\n"
    )


def cnn_fit_generator(reg: str, x: str = "x_train", y: str = "y_train_c") -> str:
    """``fit`` on an endless Python generator of shuffled batches, with ``steps_per_epoch``."""
    return (
        "def batches(x, y, batch_size=32):\n"
        "    rng = np.random.default_rng(4)\n"
        "    while True:\n"
        "        order = rng.permutation(len(x))\n"
        "        for start in range(0, len(x) - batch_size + 1, batch_size):\n"
        "            chosen = order[start:start + batch_size]\n"
        "            yield x[chosen], y[chosen]\n"
        + cnn(reg)
        + CNN_COMPILE
        + f"model.fit(batches({x}, {y}), steps_per_epoch=len({x}) // 32, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_fit_pydataset(reg: str) -> str:
    """``fit`` on a ``keras.utils.PyDataset`` subclass serving batches by index."""
    return (
        "import math\n"
        "class CifarBatches(tf.keras.utils.PyDataset):\n"
        "    def __init__(self, x, y, batch_size=32, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.x, self.y, self.batch_size = x, y, batch_size\n"
        "\n"
        "    def __len__(self):\n"
        "        return math.ceil(len(self.x) / self.batch_size)\n"
        "\n"
        "    def __getitem__(self, index):\n"
        "        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)\n"
        "        return self.x[rows], self.y[rows]\n"
        "\n"
        + cnn(reg)
        + CNN_COMPILE
        + "model.fit(CifarBatches(x_train, y_train_c), epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_fit_image_generator(reg: str, augment: bool) -> str:
    """``fit`` on ``ImageDataGenerator().flow(x, y)``, with or without random flips and shifts."""
    options = "horizontal_flip=True, width_shift_range=0.1, height_shift_range=0.1" if augment else ""
    return (
        f"generator = tf.keras.preprocessing.image.ImageDataGenerator({options})\n"
        + cnn(reg)
        + CNN_COMPILE
        + "model.fit(generator.flow(x_train, y_train_c, batch_size=32, seed=5), epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_fit_validation_split(reg: str) -> str:
    """``fit`` on the arrays, holding out the last 10% of them for validation."""
    return (
        cnn(reg)
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, validation_split=0.1, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_train_on_batch(reg: str | None, set_after_build: str | None = None) -> str:
    """A ``train_on_batch`` loop over shuffled batches; ``set_after_build``: a penalty assigned to the built layers."""
    late = (
        "for layer in model.layers:\n"
        "    if hasattr(layer, 'kernel_regularizer'):\n"
        f"        layer.kernel_regularizer = {set_after_build}\n"
        if set_after_build
        else ""
    )
    return (
        cnn(reg)
        + CNN_COMPILE
        + late
        + "rng = np.random.default_rng(6)\n"
        + "for epoch in range(2):\n"
        + "    order = rng.permutation(len(x_train))\n"
        + "    for start in range(0, len(order), 32):\n"
        + "        chosen = order[start:start + 32]\n"
        + "        model.train_on_batch(x_train[chosen], y_train_c[chosen])\n"
        + CNN_EVALUATE
    )


def cnn_gradient_tape(reg: str, add_losses: bool, compiled_step: bool) -> str:
    """A custom ``GradientTape`` loop applying Adam's updates; eager or in a ``@tf.function`` step.

    ``add_losses``: the loss includes ``sum(model.losses)``, the layers' weight penalties; without it the
    layers carry a regularizer that training never sees.
    """
    penalty = " + sum(model.losses)" if add_losses else ""
    decorator = "@tf.function\n" if compiled_step else ""
    return (
        cnn(reg)
        + "optimizer = tf.keras.optimizers.Adam()\n"
        + "loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()\n"
        + decorator
        + "def train_step(images, labels):\n"
        + "    with tf.GradientTape() as tape:\n"
        + f"        loss = loss_fn(labels, model(images, training=True)){penalty}\n"
        + "    grads = tape.gradient(loss, model.trainable_variables)\n"
        + "    optimizer.apply_gradients(zip(grads, model.trainable_variables))\n"
        + "    return loss\n"
        + "\n"
        + "for epoch in range(2):\n"
        + f"    for images, labels in {_batches('x_train', 'y_train_c', seed=7)}:\n"
        + "        train_step(images, labels)\n"
        + "model.compile(optimizer=optimizer, loss=loss_fn, metrics=['accuracy'])\n"
        + CNN_EVALUATE
    )


# ------------------------------------------------------------------------------------------------
# preprocessing: inputs and labels prepared in other ways
# ------------------------------------------------------------------------------------------------


def _prepared_fit(
    prepare: str,
    reg: str,
    where: str = "kernel",
    x: str = "xtr",
    y: str = "y_train_c",
    x_test: str = "xte",
    y_test: str = "y_test_c",
    loss: str = "sparse_categorical_crossentropy",
    first: tuple[str, ...] = (IMAGE_INPUT,),
    epochs: int = 2,
) -> str:
    """``prepare`` (which defines the prepared arrays), then the CNN fit on them and evaluated on the test split."""
    return (
        prepare
        + cnn(reg, where, first)
        + f"model.compile(optimizer='adam', loss='{loss}', metrics=['accuracy'])\n"
        + f"model.fit({x}, {y}, epochs={epochs}, verbose=0)\n"
        + f"test_loss, test_acc = model.evaluate({x_test}, {y_test}, verbose=0)\n"
    )


PER_IMAGE = (
    "xtr = tf.image.per_image_standardization(x_train_raw).numpy()\n"
    "xte = tf.image.per_image_standardization(x_test_raw).numpy()\n"
)
MEAN_IMAGE = (
    "mean_image = x_train.mean(axis=0)\n"
    "xtr = x_train - mean_image\n"
    "xte = x_test - mean_image\n"
)
GLOBAL_ZSCORE = (
    "mu, sigma = x_train_raw.mean(), x_train_raw.std()\n"
    "xtr = (x_train_raw - mu) / sigma\n"
    "xte = (x_test_raw - mu) / sigma\n"
)
FLOAT64 = (
    "xtr = x_train_raw.astype('float64') / 255.0\n"
    "xte = x_test_raw.astype('float64') / 255.0\n"
)
ONE_HOT = (
    "xtr, xte = x_train, x_test\n"
    "y_train_1h = tf.keras.utils.to_categorical(y_train_c, 10)\n"
    "y_test_1h = tf.keras.utils.to_categorical(y_test_c, 10)\n"
)
NORMALIZATION = (
    "normalizer = tf.keras.layers.Normalization(axis=-1)\n"
    "normalizer.adapt(x_train_raw.astype('float32'))\n"
)
MIRRORED = (
    "xtr = np.concatenate([x_train, x_train[:, :, ::-1]])\n"
    "ytr = np.concatenate([y_train_c, y_train_c])\n"
)


# ------------------------------------------------------------------------------------------------
# integrity: test rows in the training data
# ------------------------------------------------------------------------------------------------


def cnn_train_plus_test_dataset(reg: str) -> str:
    """One epoch on a dataset of the training and test images together, then one on the training arrays."""
    return (
        "x_all = np.concatenate([x_train, x_test])\n"
        "y_all = np.concatenate([y_train_c, y_test_c])\n"
        f"all_ds = {_batches('x_all', 'y_all', seed=8)}\n"
        + cnn(reg)
        + CNN_COMPILE
        + "model.fit(all_ds, epochs=1, verbose=0)\n"
        + "model.fit(x_train, y_train_c, epochs=1, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_test_only_train_on_batch(reg: str) -> str:
    """A ``train_on_batch`` loop over the test images only."""
    return (
        cnn(reg)
        + CNN_COMPILE
        + "for epoch in range(3):\n"
        + "    for start in range(0, len(x_test), 32):\n"
        + "        model.train_on_batch(x_test[start:start + 32], y_test_c[start:start + 32])\n"
        + CNN_EVALUATE
    )


def housing_train_plus_test_dataset(reg: str) -> str:
    """The recap model fit on a dataset of the training and test rows together."""
    return (
        "X_all = np.vstack([X_train, X_test])\n"
        "y_all = np.concatenate([y_train, y_test])\n"
        f"all_ds = {_batches('X_all', 'y_all', seed=9)}\n"
        + housing(reg)
        + RECAP_COMPILE
        + "model.fit(all_ds, epochs=30, verbose=0)\n"
        + "mse, _ = model.evaluate(X_test, y_test, verbose=0)\n"
    )


# ------------------------------------------------------------------------------------------------
# recap: the Boston Housing model trained in other ways
# ------------------------------------------------------------------------------------------------


def housing_fit_dataset(reg: str, where: str = "kernel") -> str:
    """The recap model fit on a shuffled, batched ``tf.data.Dataset`` of the raw features."""
    return (
        f"train_ds = {_batches('X_train', 'y_train', seed=10)}\n"
        + housing(reg, where)
        + RECAP_COMPILE
        + "model.fit(train_ds, epochs=30, verbose=0)\n"
        + "mse, _ = model.evaluate(X_test, y_test, verbose=0)\n"
    )


def housing_standard_scaler(reg: str, as_float32: bool) -> str:
    """The recap model on ``StandardScaler`` features (fit on the training rows), the target as a column."""
    cast = ".astype('float32')" if as_float32 else ""
    return (
        "scaler = StandardScaler()\n"
        f"X_train_s = scaler.fit_transform(X_train){cast}\n"
        f"X_test_s = scaler.transform(X_test){cast}\n"
        + housing(reg)
        + RECAP_COMPILE
        + "model.fit(X_train_s, y_train.reshape(-1, 1), epochs=30, batch_size=16, verbose=0)\n"
        + "mse, _ = model.evaluate(X_test_s, y_test.reshape(-1, 1), verbose=0)\n"
    )


def housing_gradient_tape(reg: str, add_losses: bool, compiled_step: bool) -> str:
    """The recap regression trained by a ``GradientTape`` loop on standardised features.

    ``add_losses``: the loss includes ``sum(model.losses)``; without it no penalty is trained.
    """
    penalty = " + sum(model.losses)" if add_losses else ""
    decorator = "@tf.function\n" if compiled_step else ""
    return (
        "mean, std = X_train.mean(axis=0), X_train.std(axis=0)\n"
        "X_train_z = ((X_train - mean) / std).astype('float32')\n"
        "X_test_z = ((X_test - mean) / std).astype('float32')\n"
        + housing(reg)
        + "optimizer = tf.keras.optimizers.Adam(learning_rate=0.01)\n"
        + "mse_loss = tf.keras.losses.MeanSquaredError()\n"
        + decorator
        + "def train_step(features, prices):\n"
        + "    with tf.GradientTape() as tape:\n"
        + f"        loss = mse_loss(prices, model(features, training=True)){penalty}\n"
        + "    grads = tape.gradient(loss, model.trainable_variables)\n"
        + "    optimizer.apply_gradients(zip(grads, model.trainable_variables))\n"
        + "\n"
        + "for epoch in range(30):\n"
        + f"    for features, prices in {_batches('X_train_z', 'y_train', seed=11)}:\n"
        + "        train_step(features, tf.reshape(tf.cast(prices, tf.float32), (-1, 1)))\n"
        + "model.compile(optimizer=optimizer, loss='mean_squared_error', metrics=['mean_squared_error'])\n"
        + "mse, _ = model.evaluate(X_test_z, y_test, verbose=0)\n"
    )


# ------------------------------------------------------------------------------------------------
# mechanisms: weight penalties applied by other means than a built-in regularizer on a built-in layer,
# and models Keras cannot reload without the student's own code
# ------------------------------------------------------------------------------------------------

# Regularizers of the student's own: a function, Regularizer subclasses (with and without get_config).
L1_FUNCTION = """\
def l1_penalty(weights):
    return 1e-4 * tf.reduce_sum(tf.abs(weights))

"""
SQUARED_WEIGHTS_CLASS = """\
class SquaredWeights(tf.keras.regularizers.Regularizer):
    # L2 penalty: strength * sum(w ** 2)
    def __init__(self, strength=1e-4):
        self.strength = strength

    def __call__(self, weights):
        return self.strength * tf.reduce_sum(tf.square(weights))

    def get_config(self):
        return {'strength': float(self.strength)}

"""
ABS_PENALTY_CLASS = """\
class AbsPenalty(tf.keras.regularizers.Regularizer):
    def __init__(self, l1):
        self.l1 = l1

    def __call__(self, x):
        return self.l1 * tf.reduce_sum(tf.abs(x))

"""
# Named L1, computes L2: what it computes is what trains.
MISNAMED_L1_FUNCTION = """\
def l1_reg(weight_matrix):
    # L1 regularization
    return 0.0001 * tf.reduce_sum(tf.square(weight_matrix))

"""
# A stub never filled in: it adds nothing to any gradient.
ZERO_FUNCTION = """\
def my_l1_regularizer(weights):
    # TODO: return the L1 penalty of the weights
    return tf.constant(0.0)

"""
L1_BIAS_FUNCTION = """\
def l1_bias(b):
    return 1e-4 * tf.reduce_sum(tf.abs(b))

"""


def cnn_lambda_regularizer_functional() -> str:
    """A functional CNN whose kernels carry a ``lambda`` computing an L2 penalty, on standardised images."""
    reg = "lambda w: 1e-4 * tf.reduce_sum(w ** 2)"
    return (
        f"inputs = {IMAGE_INPUT}\n"
        f"x = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer={reg})(inputs)\n"
        "x = tf.keras.layers.MaxPooling2D((2, 2))(x)\n"
        "x = tf.keras.layers.Flatten()(x)\n"
        f"x = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer={reg})(x)\n"
        f"outputs = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer={reg})(x)\n"
        "model = tf.keras.Model(inputs=inputs, outputs=outputs)\n"
        + CNN_COMPILE
        + "model.fit(x_train_std, y_train_c, epochs=2, batch_size=64, verbose=0)\n"
        + "test_loss, test_acc = model.evaluate(x_test_std, y_test_c, verbose=0)\n"
    )


def my_dense(pass_regularizer: bool) -> str:
    """A Dense-like layer of the student's own: glorot kernel ``w``, zero bias ``b``, built by ``add_weight``.

    ``pass_regularizer``: the ``kernel_regularizer`` it is given reaches ``add_weight``; without it the
    layer stores it and never uses it, so no penalty trains.
    """
    regularizer = "\n                                 regularizer=self.kernel_regularizer," if pass_regularizer else ""
    return (
        "class MyDense(tf.keras.layers.Layer):\n"
        "    def __init__(self, units, activation=None, kernel_regularizer=None, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.units = units\n"
        "        self.activation = tf.keras.activations.get(activation)\n"
        "        self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)\n"
        "\n"
        "    def build(self, input_shape):\n"
        "        self.w = self.add_weight(name='w', shape=(input_shape[-1], self.units), initializer='glorot_uniform',"
        f"{regularizer} trainable=True)\n"
        "        self.b = self.add_weight(name='b', shape=(self.units,), initializer='zeros', trainable=True)\n"
        "\n"
        "    def call(self, inputs):\n"
        "        return self.activation(tf.matmul(inputs, self.w) + self.b)\n"
        "\n"
    )


def cnn_custom_dense_head(reg: str, pass_regularizer: bool = True, conv_reg: str | None = None) -> str:
    """The CNN with a head of ``MyDense`` layers given ``reg``; ``conv_reg``: the convolution's regularizer."""
    return (
        my_dense(pass_regularizer)
        + "model = tf.keras.Sequential([\n"
        f"    {IMAGE_INPUT},\n"
        f"    tf.keras.layers.Conv2D(32, (3, 3), activation='relu'{_kw(conv_reg)}),\n"
        "    tf.keras.layers.MaxPooling2D((2, 2)),\n"
        "    tf.keras.layers.Flatten(),\n"
        f"    MyDense(128, activation='relu', kernel_regularizer={reg}),\n"
        f"    MyDense(10, activation='softmax', kernel_regularizer={reg}),\n"
        "])\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_conv_block(reg: str) -> str:
    """A layer of the student's own wrapping a ``Conv2D`` (given ``reg``) and its pooling, then a Dense head."""
    return (
        "class ConvBlock(tf.keras.layers.Layer):\n"
        "    # 3x3 convolution, ReLU, then 2x2 max pooling\n"
        "    def __init__(self, filters, kernel_regularizer=None, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.conv = tf.keras.layers.Conv2D(filters, (3, 3), activation='relu',\n"
        "                                           kernel_regularizer=kernel_regularizer)\n"
        "        self.pool = tf.keras.layers.MaxPooling2D((2, 2))\n"
        "\n"
        "    def call(self, inputs):\n"
        "        return self.pool(self.conv(inputs))\n"
        "\n"
        f"reg = {reg}\n"
        "model = tf.keras.Sequential([\n"
        f"    {IMAGE_INPUT},\n"
        "    ConvBlock(32, kernel_regularizer=reg),\n"
        "    tf.keras.layers.Flatten(),\n"
        "    tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=reg),\n"
        "    tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=reg),\n"
        "])\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, batch_size=64, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_lambda_centering_functional(reg: str) -> str:
    """A functional CNN on the raw images, a ``Lambda`` layer mapping them to [-1, 1] inside the model."""
    return (
        f"inputs = {IMAGE_INPUT}\n"
        "x = tf.keras.layers.Lambda(lambda t: (t - 127.5) / 127.5)(inputs)\n"
        f"x = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer={reg})(x)\n"
        "x = tf.keras.layers.MaxPooling2D((2, 2))(x)\n"
        "x = tf.keras.layers.Flatten()(x)\n"
        f"x = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer={reg})(x)\n"
        f"outputs = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer={reg})(x)\n"
        "model = tf.keras.Model(inputs, outputs)\n"
        + CNN_COMPILE
        + "model.fit(x_train_raw, y_train_c, epochs=2, verbose=0)\n"
        + "test_loss, test_acc = model.evaluate(x_test_raw, y_test_c, verbose=0)\n"
    )


def cnn_subclassed_model(reg: str, train_step: str = "") -> str:
    """A ``tf.keras.Model`` subclass holding the CNN's layers (given ``reg``); ``train_step``: its own, if any."""
    return (
        "class CifarCNN(tf.keras.Model):\n"
        "    def __init__(self, penalty=None):\n"
        "        super().__init__()\n"
        "        self.conv = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=penalty)\n"
        "        self.pool = tf.keras.layers.MaxPooling2D((2, 2))\n"
        "        self.flatten = tf.keras.layers.Flatten()\n"
        "        self.hidden = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=penalty)\n"
        "        self.classifier = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=penalty)\n"
        "\n"
        "    def call(self, inputs, training=False):\n"
        "        x = self.pool(self.conv(inputs))\n"
        "        return self.classifier(self.hidden(self.flatten(x)))\n"
        + train_step
        + "\n"
        f"model = CifarCNN(penalty={reg})\n"
        + CNN_COMPILE
        + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n"
        + CNN_EVALUATE
    )


# A train_step of the student's own that differentiates the cross-entropy only: the layers' penalties
# are never added, so none trains.
TRAIN_STEP_WITHOUT_LOSSES = """\

    def train_step(self, data):
        images, labels = data
        with tf.GradientTape() as tape:
            predictions = self(images, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, predictions))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for metric in self.metrics:
            if metric.name == 'loss':
                metric.update_state(loss)
            else:
                metric.update_state(labels, predictions)
        return {m.name: m.result() for m in self.metrics}
"""


def add_loss_dense(kind: str) -> str:
    """A Dense-like layer that adds a penalty to the model's loss in ``call`` by ``self.add_loss``.

    ``kind``: ``l1`` (``|kernel|``), ``l2`` (``kernel ** 2``) or ``activity`` (the squares of its outputs:
    no weight penalty).
    """
    name = {"l1": "L1Dense", "l2": "L2Dense", "activity": "QuietDense"}[kind]
    term = {
        "l1": "self.add_loss(self.strength * tf.reduce_sum(tf.abs(self.kernel)))\n",
        "l2": "self.add_loss(self.strength * tf.reduce_sum(tf.square(self.kernel)))\n",
        "activity": "self.add_loss(self.strength * tf.reduce_sum(tf.square(outputs)))\n",
    }[kind]
    return (
        f"class {name}(tf.keras.layers.Layer):\n"
        "    def __init__(self, units, activation=None, strength=1e-4, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.units = units\n"
        "        self.strength = strength\n"
        "        self.activation = tf.keras.activations.get(activation)\n"
        "\n"
        "    def build(self, input_shape):\n"
        "        self.kernel = self.add_weight(name='kernel', shape=(input_shape[-1], self.units),\n"
        "                                      initializer='glorot_uniform')\n"
        "        self.bias = self.add_weight(name='bias', shape=(self.units,), initializer='zeros')\n"
        "\n"
        "    def call(self, inputs):\n"
        "        outputs = self.activation(tf.matmul(inputs, self.kernel) + self.bias)\n"
        f"        {term}"
        "        return outputs\n"
        "\n"
        "model = tf.keras.Sequential([\n"
        f"    {IMAGE_INPUT},\n"
        "    tf.keras.layers.Conv2D(32, (3, 3), activation='relu'),\n"
        "    tf.keras.layers.MaxPooling2D((2, 2)),\n"
        "    tf.keras.layers.Flatten(),\n"
        f"    {name}(128, activation='relu'),\n"
        f"    {name}(10, activation='softmax'),\n"
        "])\n"
    )


def cnn_add_loss_fit(kind: str) -> str:
    """The ``add_loss`` head (:func:`add_loss_dense`) trained by ``fit``, which adds ``model.losses``."""
    return add_loss_dense(kind) + CNN_COMPILE + "model.fit(x_train, y_train_c, epochs=2, verbose=0)\n" + CNN_EVALUATE


def cnn_add_loss_tape_without_losses() -> str:
    """The L1 ``add_loss`` head trained by a ``GradientTape`` loop that never adds ``model.losses``: no penalty."""
    return (
        add_loss_dense("l1")
        + "optimizer = tf.keras.optimizers.Adam()\n"
        + "loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()\n"
        + "\n"
        + "@tf.function\n"
        + "def train_step(images, labels):\n"
        + "    with tf.GradientTape() as tape:\n"
        + "        loss = loss_fn(labels, model(images, training=True))\n"
        + "    grads = tape.gradient(loss, model.trainable_variables)\n"
        + "    optimizer.apply_gradients(zip(grads, model.trainable_variables))\n"
        + "\n"
        + "for epoch in range(2):\n"
        + f"    for images, labels in {_batches('x_train', 'y_train_c', seed=13)}:\n"
        + "        train_step(images, labels)\n"
        + "model.compile(optimizer=optimizer, loss=loss_fn, metrics=['accuracy'])\n"
        + CNN_EVALUATE
    )


ADD_LOSS_CONV = """\
class RegularisedConv(tf.keras.layers.Layer):
    def __init__(self, filters, weight_decay=5e-4, **kwargs):
        super().__init__(**kwargs)
        self.weight_decay = weight_decay
        self.conv = tf.keras.layers.Conv2D(filters, (3, 3), activation='relu')

    def call(self, inputs):
        outputs = self.conv(inputs)
        self.add_loss(self.weight_decay * tf.nn.l2_loss(self.conv.kernel))
        return outputs

model = tf.keras.Sequential([
    tf.keras.Input(shape=(32, 32, 3)),
    RegularisedConv(32),
    tf.keras.layers.MaxPooling2D((2, 2)),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation='relu'),
    tf.keras.layers.Dense(10, activation='softmax'),
])
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train_std, y_train_c, epochs=2, verbose=0)
test_loss, test_acc = model.evaluate(x_test_std, y_test_c, verbose=0)
"""

ADD_LOSS_SUBCLASSED_MODEL = """\
class WeightDecayCNN(tf.keras.Model):
    def __init__(self, weight_decay=1e-4):
        super().__init__()
        self.weight_decay = weight_decay
        self.conv = tf.keras.layers.Conv2D(32, (3, 3), activation='relu')
        self.pool = tf.keras.layers.MaxPooling2D((2, 2))
        self.flatten = tf.keras.layers.Flatten()
        self.hidden = tf.keras.layers.Dense(128, activation='relu')
        self.classifier = tf.keras.layers.Dense(10, activation='softmax')

    def call(self, inputs):
        outputs = self.classifier(self.hidden(self.flatten(self.pool(self.conv(inputs)))))
        kernels = [self.conv.kernel, self.hidden.kernel, self.classifier.kernel]
        self.add_loss(self.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels]))
        return outputs

model = WeightDecayCNN()
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train, y_train_c, epochs=2, batch_size=64, verbose=0)
test_loss, test_acc = model.evaluate(x_test, y_test_c, verbose=0)
"""

# Hand-written penalties, as expressions of ``model``.
ABS_KERNELS = "1e-4 * tf.add_n([tf.reduce_sum(tf.abs(w)) for w in model.trainable_weights if 'kernel' in w.name])"
SQUARED_KERNELS = (
    "1e-4 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in model.trainable_weights if 'kernel' in w.name])"
)
NN_L2_LOSS_KERNELS = (
    "5e-4 * tf.add_n([tf.nn.l2_loss(layer.kernel) for layer in model.layers if hasattr(layer, 'kernel')])"
)
ABS_BIASES = "1e-4 * tf.add_n([tf.reduce_sum(tf.abs(w)) for w in model.trainable_weights if 'bias' in w.name])"


def cnn_tape_penalty(
    penalty: str, decorator: str = "", outside_tape: bool = False, reg: str | None = None, add_losses: bool = False,
    epochs: int = 2, seed: int = 14,
) -> str:
    """A ``GradientTape`` loop whose loss adds ``penalty`` (an expression; ``""``: none) to the cross-entropy.

    ``decorator``: of the step (``@tf.function``, ``@tf.function(jit_compile=True)``, or none: eager).
    ``outside_tape``: the penalty is computed before the tape starts recording, so it is a constant to the
    tape and adds nothing to the gradient. ``reg``: the layers' regularizer; ``add_losses``: the loss adds
    ``model.losses`` too.
    """
    terms = (" + penalty" if penalty else "") + (" + tf.add_n(model.losses)" if add_losses else "")
    before = f"    penalty = {penalty}\n" if penalty and outside_tape else ""
    inside = f"        penalty = {penalty}\n" if penalty and not outside_tape else ""
    return (
        cnn(reg)
        + "optimizer = tf.keras.optimizers.Adam(learning_rate=1e-3)\n"
        + "loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()\n"
        + "\n"
        + (decorator + "\n" if decorator else "")
        + "def train_step(images, labels):\n"
        + before
        + "    with tf.GradientTape() as tape:\n"
        + "        predictions = model(images, training=True)\n"
        + inside
        + f"        loss = loss_fn(labels, predictions){terms}\n"
        + "    grads = tape.gradient(loss, model.trainable_variables)\n"
        + "    optimizer.apply_gradients(zip(grads, model.trainable_variables))\n"
        + "    return loss\n"
        + "\n"
        + f"train_ds = {_batches('x_train', 'y_train_c', seed=seed)}\n"
        + f"for epoch in range({epochs}):\n"
        + "    for images, labels in train_ds:\n"
        + "        train_step(images, labels)\n"
        + "model.compile(optimizer=optimizer, loss=loss_fn, metrics=['accuracy'])\n"
        + CNN_EVALUATE
    )


XLA = "@tf.function(jit_compile=True)"


def cnn_fit_jit(reg: str) -> str:
    """``compile(..., jit_compile=True)`` then ``fit`` on the arrays."""
    return (
        cnn(reg)
        + "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'],\n"
        + "              jit_compile=True)\n"
        + "model.fit(x_train, y_train_c, epochs=2, batch_size=50, verbose=0)\n"
        + CNN_EVALUATE
    )


def cnn_named_input(
    reg: str, where: str = "kernel", dict_model: bool = False, x: str = "x_train", x_test: str = "x_test",
    scale_inside: bool = False,
) -> str:
    """A functional CNN whose input is named ``pixels``, fit and evaluated on ``{'pixels': images}``.

    ``dict_model``: built as ``tf.keras.Model(inputs={'pixels': ...})``; ``scale_inside``: a ``Lambda``
    layer divides the (raw) images by 255 inside the model.
    """
    kw = _kw(reg, where)
    first = "x = tf.keras.layers.Lambda(lambda t: t / 255.0)(pixels)\n" if scale_inside else "x = pixels\n"
    model = "tf.keras.Model(pixels, outputs)"
    if dict_model:
        model = "tf.keras.Model(inputs={'pixels': pixels}, outputs=outputs)"
    return (
        "pixels = tf.keras.Input(shape=(32, 32, 3), name='pixels')\n"
        + first
        + f"x = tf.keras.layers.Conv2D(32, (3, 3), activation='relu'{kw})(x)\n"
        + "x = tf.keras.layers.MaxPooling2D((2, 2))(x)\n"
        + "x = tf.keras.layers.Flatten()(x)\n"
        + f"x = tf.keras.layers.Dense(128, activation='relu'{kw})(x)\n"
        + f"outputs = tf.keras.layers.Dense(10, activation='softmax'{kw})(x)\n"
        + f"model = {model}\n"
        + CNN_COMPILE
        + f"model.fit({{'pixels': {x}}}, y_train_c, epochs=2, verbose=0)\n"
        + f"test_loss, test_acc = model.evaluate({{'pixels': {x_test}}}, y_test_c, verbose=0)\n"
    )



# ------------------------------------------------------------------------------------------------
# The patterns
# ------------------------------------------------------------------------------------------------


def _image(name: str, topic: str, code: str, penalty: str | None, **truths: bool) -> Pattern:
    return Pattern(name, topic, code, penalty, cnn=True, dataset="cifar10", **truths)


def _housing(name: str, topic: str, code: str, penalty: str | None, **truths: bool) -> Pattern:
    return Pattern(name, topic, code, penalty, cnn=False, dataset="boston", **truths)


PATTERNS: tuple[Pattern, ...] = (
    # rebuild: assigning kernel_regularizer to built layers trains nothing; rebuilding makes it count.
    _image("rebuild.cnn_set_after_compile_l1", "rebuild", cnn_set_after_compile(L1), None),
    _image("rebuild.cnn_set_on_functional_l2", "rebuild", cnn_set_on_functional(L2), None),
    _image("rebuild.cnn_clone_model_l1", "rebuild", cnn_clone_after_setting(L1), "l1"),
    _image("rebuild.cnn_from_config_l2", "rebuild", cnn_from_config_after_setting(L2), "l2"),
    _image("rebuild.cnn_set_before_build_l1", "rebuild", cnn_set_before_build(L1), "l1"),
    _image("rebuild.cnn_partial_constructors_l2", "rebuild", cnn_partial_constructors(L2), "l2"),
    _image("rebuild.cnn_clone_unused_l1", "rebuild", cnn_clone_unused(L1), None),
    _housing("rebuild.recap_set_after_compile_l1", "rebuild", housing_set_after_compile(RECAP_L1), None),
    _housing("rebuild.recap_clone_model_l2", "rebuild", housing_clone_after_setting(RECAP_L2), "l2"),
    # training: every path a model can be trained by.
    _image("training.dataset_l1", "training", cnn_fit_dataset(L1), "l1"),
    _image("training.dataset_map_scaling_l2", "training", cnn_fit_dataset_map(L2), "l2"),
    _image("training.dataset_zipped_l1", "training", cnn_fit_zipped(L1), "l1"),
    _image("training.dataset_dict_inputs_l2", "training", cnn_fit_dict_dataset(L2), "l2"),
    _image("training.dataset_activity_l1", "training", cnn_fit_dataset(L1, where="activity"), None),
    _image("training.generator_l1", "training", cnn_fit_generator(L1), "l1"),
    _image("training.generator_l1_l2", "training", cnn_fit_generator(L1L2), "l1_l2"),
    _image("training.pydataset_l2", "training", cnn_fit_pydataset(L2), "l2"),
    _image("training.validation_split_l1", "training", cnn_fit_validation_split(L1), "l1"),
    _image("training.train_on_batch_l2", "training", cnn_train_on_batch(L2), "l2"),
    _image("training.train_on_batch_set_after_build_l1", "training", cnn_train_on_batch(None, set_after_build=L1), None),
    _image("training.tape_eager_l1", "training", cnn_gradient_tape(L1, add_losses=True, compiled_step=False), "l1"),
    _image("training.tape_function_l2", "training", cnn_gradient_tape(L2, add_losses=True, compiled_step=True), "l2"),
    _image("training.tape_eager_no_losses_l1", "training", cnn_gradient_tape(L1, add_losses=False, compiled_step=False), None),
    _image("training.tape_function_no_losses_l2", "training", cnn_gradient_tape(L2, add_losses=False, compiled_step=True), None),
    # Last in their family: should describing an iterator take the kernel down, only these cells are lost.
    _image("training.image_generator_l1", "training", cnn_fit_image_generator(L1, augment=False), "l1"),
    _image("training.image_generator_augmented_l2", "training", cnn_fit_image_generator(L2, augment=True), "l2"),
    # preprocessing: inputs and labels prepared other than by per-channel scaling.
    _image("preprocessing.per_image_standardization_l1", "preprocessing", _prepared_fit(PER_IMAGE, L1), "l1"),
    _image("preprocessing.mean_image_l2", "preprocessing", _prepared_fit(MEAN_IMAGE, L2), "l2"),
    _image("preprocessing.mean_image_l1_l2", "preprocessing", _prepared_fit(MEAN_IMAGE, L1L2), "l1_l2"),
    _image("preprocessing.global_zscore_l1", "preprocessing", _prepared_fit(GLOBAL_ZSCORE, L1), "l1"),
    _image("preprocessing.float64_l2", "preprocessing", _prepared_fit(FLOAT64, L2), "l2"),
    _image(
        "preprocessing.one_hot_l1", "preprocessing",
        _prepared_fit(ONE_HOT, L1, y="y_train_1h", y_test="y_test_1h", loss="categorical_crossentropy"), "l1",
    ),
    _image(
        "preprocessing.one_hot_bias_l2", "preprocessing",
        _prepared_fit(ONE_HOT, L2, where="bias", y="y_train_1h", y_test="y_test_1h", loss="categorical_crossentropy"),
        None,
    ),
    _image(
        "preprocessing.rescaling_layer_l2", "preprocessing",
        _prepared_fit("", L2, x="x_train_raw", x_test="x_test_raw",
                      first=(IMAGE_INPUT, "tf.keras.layers.Rescaling(1.0 / 255)")),
        "l2",
    ),
    _image(
        "preprocessing.normalization_layer_l1", "preprocessing",
        _prepared_fit(NORMALIZATION, L1, x="x_train_raw", x_test="x_test_raw", first=(IMAGE_INPUT, "normalizer")),
        "l1",
    ),
    _image(
        "preprocessing.random_flip_layer_l2", "preprocessing",
        _prepared_fit("", L2, x="x_train", x_test="x_test",
                      first=(IMAGE_INPUT, "tf.keras.layers.RandomFlip('horizontal', seed=12)")),
        "l2",
    ),
    _image(
        "preprocessing.mirrored_training_set_l1", "preprocessing",
        _prepared_fit(MIRRORED, L1, y="ytr", x_test="x_test", epochs=1), "l1",
    ),
    # integrity: test rows in the training data, however they got there.
    _image("integrity.train_plus_test_dataset_l1", "integrity", cnn_train_plus_test_dataset(L1), "l1", leaks=True),
    _image("integrity.test_only_train_on_batch_l2", "integrity", cnn_test_only_train_on_batch(L2), "l2", leaks=True),
    _image(
        "integrity.train_plus_test_generator_l1", "integrity",
        "x_all = np.concatenate([x_train, x_test])\ny_all = np.concatenate([y_train_c, y_test_c])\n"
        + cnn_fit_generator(L1, x="x_all", y="y_all"),
        "l1", leaks=True,
    ),
    _housing(
        "integrity.recap_train_plus_test_dataset_l2", "integrity", housing_train_plus_test_dataset(RECAP_L2), "l2",
        leaks=True,
    ),
    # recap: the Boston Housing model trained by tf.data, on StandardScaler features, by GradientTape.
    _housing("recap.dataset_l1", "recap", housing_fit_dataset(RECAP_L1), "l1"),
    _housing("recap.dataset_l2", "recap", housing_fit_dataset(RECAP_L2), "l2"),
    _housing("recap.dataset_activity_l2", "recap", housing_fit_dataset(RECAP_L2, where="activity"), None),
    _housing("recap.standard_scaler_l1", "recap", housing_standard_scaler(RECAP_L1, as_float32=False), "l1"),
    _housing("recap.standard_scaler_l2", "recap", housing_standard_scaler(RECAP_L2, as_float32=True), "l2"),
    _housing("recap.tape_eager_l1", "recap", housing_gradient_tape(RECAP_L1, add_losses=True, compiled_step=False), "l1"),
    _housing("recap.tape_function_l2", "recap", housing_gradient_tape(RECAP_L2, add_losses=True, compiled_step=True), "l2"),
    _housing(
        "recap.tape_eager_no_losses_l1", "recap",
        housing_gradient_tape(RECAP_L1, add_losses=False, compiled_step=False), None,
    ),
    # mechanisms: a weight penalty is what its training adds to a weight's gradient (L1: λ·sign(w), L2:
    # 2λ·w), whatever API put it there; custom layers, regularizers and Lambda layers Keras cannot reload.
    # Regularizers of the student's own.
    _image(
        "mechanisms.custom_function_l1", "mechanisms",
        _prepared_fit(L1_FUNCTION, "l1_penalty", x="x_train", x_test="x_test"), "l1",
    ),
    _image(
        "mechanisms.custom_class_l2", "mechanisms",
        _prepared_fit(SQUARED_WEIGHTS_CLASS, "SquaredWeights(1e-4)", x="x_train_std", x_test="x_test_std"), "l2",
    ),
    _image(
        "mechanisms.custom_class_no_config_l1", "mechanisms",
        _prepared_fit(ABS_PENALTY_CLASS, "AbsPenalty(1e-4)", x="x_train", x_test="x_test", epochs=1), "l1",
    ),
    _image("mechanisms.custom_lambda_l2", "mechanisms", cnn_lambda_regularizer_functional(), "l2"),
    _image(
        "mechanisms.custom_function_named_l1_computes_l2", "mechanisms",
        _prepared_fit(MISNAMED_L1_FUNCTION, "l1_reg", x="x_train", x_test="x_test"), "l2",
    ),
    _image(
        "mechanisms.custom_function_returns_zero_l1", "mechanisms",
        _prepared_fit(ZERO_FUNCTION, "my_l1_regularizer", x="x_train", x_test="x_test"), None,
    ),
    _image(
        "mechanisms.custom_function_bias_only_l1", "mechanisms",
        _prepared_fit(L1_BIAS_FUNCTION, "l1_bias", where="bias", x="x_train", x_test="x_test"), None,
    ),
    # Layers and models of the student's own, and Lambda layers.
    _image("mechanisms.layer_dense_l1", "mechanisms", cnn_custom_dense_head(L1, conv_reg=L1), "l1"),
    _image(
        "mechanisms.layer_dense_drops_regularizer_l2", "mechanisms", cnn_custom_dense_head(L2, pass_regularizer=False),
        None,
    ),
    _image("mechanisms.layer_conv_block_l2", "mechanisms", cnn_conv_block(L2), "l2"),
    _image(
        "mechanisms.lambda_scaling_l1", "mechanisms",
        _prepared_fit("", L1, x="x_train_raw", x_test="x_test_raw",
                      first=(IMAGE_INPUT, "tf.keras.layers.Lambda(lambda t: t / 255.0)")),
        "l1",
    ),
    _image("mechanisms.lambda_centering_l1_l2", "mechanisms", cnn_lambda_centering_functional(L1L2), "l1_l2"),
    _image("mechanisms.subclassed_model_l1", "mechanisms", cnn_subclassed_model(L1), "l1"),
    _image(
        "mechanisms.subclassed_train_step_without_losses_l2", "mechanisms",
        cnn_subclassed_model(L2, train_step=TRAIN_STEP_WITHOUT_LOSSES), None,
    ),
    # Penalties added by add_loss in call.
    _image("mechanisms.add_loss_dense_l1", "mechanisms", cnn_add_loss_fit("l1"), "l1"),
    _image("mechanisms.add_loss_conv_l2", "mechanisms", ADD_LOSS_CONV, "l2"),
    _image("mechanisms.add_loss_subclassed_model_l2", "mechanisms", ADD_LOSS_SUBCLASSED_MODEL, "l2"),
    _image("mechanisms.add_loss_activity_l2", "mechanisms", cnn_add_loss_fit("activity"), None),
    _image("mechanisms.add_loss_tape_without_losses_l1", "mechanisms", cnn_add_loss_tape_without_losses(), None),
    # Penalties written by hand into a GradientTape loop.
    _image("mechanisms.tape_eager_abs_l1", "mechanisms", cnn_tape_penalty(ABS_KERNELS, epochs=1), "l1"),
    _image("mechanisms.tape_function_square_l2", "mechanisms", cnn_tape_penalty(SQUARED_KERNELS, "@tf.function"), "l2"),
    _image(
        "mechanisms.tape_function_nn_l2_loss_l2", "mechanisms", cnn_tape_penalty(NN_L2_LOSS_KERNELS, "@tf.function"),
        "l2",
    ),
    _image(
        "mechanisms.tape_penalty_outside_tape_l1", "mechanisms",
        cnn_tape_penalty(ABS_KERNELS, "@tf.function", outside_tape=True), None,
    ),
    _image("mechanisms.tape_bias_penalty_l1", "mechanisms", cnn_tape_penalty(ABS_BIASES, "@tf.function"), None),
    # XLA-compiled training.
    _image(
        "mechanisms.xla_step_model_losses_l1", "mechanisms", cnn_tape_penalty("", XLA, reg=L1, add_losses=True), "l1",
    ),
    _image("mechanisms.xla_step_square_l2", "mechanisms", cnn_tape_penalty(SQUARED_KERNELS, XLA), "l2"),
    _image("mechanisms.xla_step_without_penalty_l1", "mechanisms", cnn_tape_penalty("", XLA, reg=L1), None),
    _image("mechanisms.xla_fit_jit_compile_l2", "mechanisms", cnn_fit_jit(L2), "l2"),
    _image("mechanisms.xla_fit_jit_compile_l1_l2", "mechanisms", cnn_fit_jit(L1L2), "l1_l2"),
    # Named and dict inputs, fit and evaluated on {'pixels': images}.
    _image("mechanisms.named_input_l1", "mechanisms", cnn_named_input(L1), "l1"),
    _image(
        "mechanisms.dict_inputs_model_l2", "mechanisms",
        cnn_named_input(L2, dict_model=True, x="x_train_std", x_test="x_test_std"), "l2",
    ),
    _image("mechanisms.named_input_activity_l1", "mechanisms", cnn_named_input(L1, where="activity"), None),
    _image("mechanisms.dict_inputs_model_l1_l2", "mechanisms", cnn_named_input(L1L2, dict_model=True), "l1_l2"),
    _image(
        "mechanisms.named_input_lambda_scaling_l2", "mechanisms",
        cnn_named_input(L2, x="x_train_raw", x_test="x_test_raw", scale_inside=True), "l2",
    ),
)

BY_NAME: dict[str, Pattern] = {p.name: p for p in PATTERNS}
# Topics graded by tests/test_student_patterns.py but not yet part of the recorded smoke calibration
# (reference/calibration/smoke.json): ``python -m reference calibrate`` grades CALIBRATED only, and the
# topic leaves this tuple once a calibration run that includes it is recorded (docs/calibration.md).
PENDING_CALIBRATION: tuple[str, ...] = ()
CALIBRATED: tuple[Pattern, ...] = tuple(p for p in PATTERNS if p.topic not in PENDING_CALIBRATION)


# ------------------------------------------------------------------------------------------------
# Family notebooks
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """One notebook of patterns: the set-up cell, then one code cell per pattern (``cell_of``: name -> cell index)."""

    name: str
    notebook: nbformat.NotebookNode
    cell_of: dict[str, int]
    setup: tuple[int, ...] = (1,)  # the set-up cell every submission drawing on this family includes


def family_name(pattern: Pattern) -> str:
    """The notebook a pattern's cell goes in: ``recap`` for Boston Housing, its topic for CIFAR-10."""
    return "recap" if pattern.dataset == "boston" else pattern.topic


def _family(name: str, patterns: list[Pattern]) -> Family:
    md = nbformat.v4.new_markdown_cell
    code = nbformat.v4.new_code_cell
    if name == "recap":
        cells = [md("## Recap on Regularization (student patterns)"), code(RECAP_SETUP)]
    else:
        cells = [md(f"## Practice (student patterns: {name})"), code(CIFAR_SETUP)]
    cell_of = {}
    for pattern in patterns:
        cell_of[pattern.name] = len(cells)
        cells.append(code(pattern.code))
    return Family(name, family_notebook(cells), cell_of, setup=(1,))


def families(only: set[str] | None = None) -> list[Family]:
    """The family notebooks: the Boston Housing patterns first, then one notebook per CIFAR-10 topic.

    ``only``: the names of the patterns to include (a family none of them belongs to is left out).
    """
    groups: dict[str, list[Pattern]] = {}
    chosen = [p for p in PATTERNS if only is None or p.name in only]
    for pattern in sorted(chosen, key=lambda p: p.dataset != "boston"):
        groups.setdefault(family_name(pattern), []).append(pattern)
    return [_family(name, patterns) for name, patterns in groups.items()]


# ------------------------------------------------------------------------------------------------
# Labels for the calibration
# ------------------------------------------------------------------------------------------------


def decided(pattern: Pattern) -> tuple[str, ...]:
    """The checks a submission made of the set-up and this one pattern cell asks a verdict of.

    The regularizer checks of its part, and the leakage check. Not the metric checks (``*_mse``,
    ``*_accuracy``) nor ``cnn.l1_sparsity``: a pattern trains for 1 or 2 epochs (CIFAR-10) or 30 (Boston
    Housing), not the exercise's 10 and 100, so its metrics say nothing about whether a correct answer
    passes. Nor the checks of the other part (trivially failed: no model of that part), ``recap.runs``,
    ``recap.l1_sparsity`` (informational) and ``integrity.reported_metrics``.
    """
    return (f"{pattern.part}.l1_regularizer", f"{pattern.part}.l2_regularizer", "integrity.no_test_leakage")


def expected(pattern: Pattern) -> dict[str, bool | None]:
    """The verdict each check must reach on the submission made of the set-up and this one pattern cell.

    From the truths alone: ``<part>.l1_regularizer`` (resp. ``l2``) passes exactly when the penalty its
    training really applied is L1 (resp. L2) alone, and, for CIFAR-10, the model is a CNN;
    ``integrity.no_test_leakage`` fails exactly when it was trained on test rows. Every other check:
    ``None`` (no verdict; see :func:`decided`).
    """
    out: dict[str, bool | None] = dict.fromkeys(CHECK_IDS)
    for kind in ("l1", "l2"):
        out[f"{pattern.part}.{kind}_regularizer"] = pattern.penalty == kind and (pattern.part == RECAP or pattern.cnn)
    out["integrity.no_test_leakage"] = not pattern.leaks
    assert {cid for cid, verdict in out.items() if verdict is not None} == set(decided(pattern))
    return out


# ------------------------------------------------------------------------------------------------
# For the docs
# ------------------------------------------------------------------------------------------------


def truth_table() -> str:
    """A markdown table of every pattern and its truths, in corpus order."""
    head = ["pattern", "topic", "penalty trained", "cnn", "dataset", "leaks", "metric reproducible", "correct"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in PATTERNS:
        cells = [
            f"`{p.name}`", p.topic, p.penalty or "none", _yes(p.cnn), p.dataset, _yes(p.leaks), _yes(p.reproducible),
            _yes(p.correct),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def counts() -> dict[str, dict[str, int]]:
    """Per topic: how many patterns, and how many of them are correct answers and wrong ones."""
    out: dict[str, dict[str, int]] = {}
    for p in PATTERNS:
        c = out.setdefault(p.topic, {"patterns": 0, "correct": 0, "wrong": 0})
        c["patterns"] += 1
        c["correct" if p.correct else "wrong"] += 1
    return out


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
