"""Whole correct notebooks whose penalties reach training in other ways than ``kernel_regularizer``
score full marks at the ``smoke`` profile, as the exercise's own solution does.

Each notebook is ``submissions/solution.ipynb`` with its practice cells replaced by a CNN trained
another way (and, in the first, a recap written with custom regularizers): callable and subclassed
regularizers, a custom layer, ``Lambda`` scaling, ``add_loss``, a hand-written penalty in a
``GradientTape`` loop (traced and eager), an XLA-compiled step, a subclassed model, inputs given by
name. Slow (minutes a notebook): ``pytest tests/test_mechanism_notebooks.py -m slow``.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import nbformat
import pytest

from grader.grade import Grader
from grader.records import SubmissionResult
from grader.settings import GradingConfig
from grader.submissions import Submission

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "submissions" / "solution.ipynb"

RAW_CIFAR = """\
import tensorflow as tf
import numpy as np

(x_train, y_train), (x_test, y_test) = tf.keras.datasets.cifar10.load_data()
"""
SCALED_CIFAR = RAW_CIFAR + """\
x_train = x_train.astype('float32') / 255.0
x_test = x_test.astype('float32') / 255.0
"""
REPORT = """\
print('Test accuracy with L1 regularization:', l1_test_acc)
print('Test accuracy with L2 regularization:', l2_test_acc)
"""

# The recap fixed with a Regularizer subclass (no get_config) for L1 and a plain function for L2.
CUSTOM_RECAP = r'''
import tensorflow as tf
import pandas as pd
import numpy as np
from sklearn.model_selection import train_test_split

data_url = "http://lib.stat.cmu.edu/datasets/boston"
raw_df = pd.read_csv(data_url, sep="\s+", skiprows=22, header=None)
X = np.hstack([raw_df.values[::2, :], raw_df.values[1::2, :2]])
y = raw_df.values[1::2, 2]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=42)


class AbsoluteValuePenalty(tf.keras.regularizers.Regularizer):
    def __init__(self, strength):
        self.strength = strength

    def __call__(self, weights):
        return self.strength * tf.reduce_sum(tf.abs(weights))


def squared_penalty(weights):
    return 1e-5 * tf.reduce_sum(tf.square(weights))


def housing_model(penalty):
    model = tf.keras.models.Sequential()
    model.add(tf.keras.layers.Dense(10, input_dim=X_train.shape[1], activation='relu'))
    model.add(tf.keras.layers.Dense(1, kernel_regularizer=penalty))
    model.compile(loss='mean_squared_error', optimizer='adam', metrics=['mean_squared_error'])
    model.fit(X_train, y_train, epochs=100, batch_size=32, verbose=0)
    return model


l1_model = housing_model(AbsoluteValuePenalty(1e-5))
mse1, _ = l1_model.evaluate(X_test, y_test, verbose=0)
l2_model = housing_model(squared_penalty)
mse2, _ = l2_model.evaluate(X_test, y_test, verbose=0)
print("Mean Squared Error with L1 Regularization:", mse1)
print("Mean Squared Error with L2 Regularization:", mse2)
'''

# L1: a plain function as every layer's kernel regularizer, the images scaled by a Lambda layer.
# L2: a custom dense layer made with add_weight and a Regularizer subclass.
CUSTOM_OBJECTS = [
    RAW_CIFAR,
    '''
def l1_of(weights):
    return 1e-4 * tf.reduce_sum(tf.abs(weights))


model = tf.keras.models.Sequential([
    tf.keras.Input(shape=(32, 32, 3)),
    tf.keras.layers.Lambda(lambda images: tf.cast(images, tf.float32) / 255.0),
    tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=l1_of),
    tf.keras.layers.MaxPooling2D((2, 2)),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=l1_of),
    tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=l1_of),
])
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train, y_train, epochs=10, verbose=0)
test_loss, l1_test_acc = model.evaluate(x_test, y_test, verbose=0)
print('Test accuracy with L1 regularization:', l1_test_acc)
''',
    '''
class SquaredWeights(tf.keras.regularizers.Regularizer):
    def __call__(self, weights):
        return 1e-4 * tf.reduce_sum(weights * weights)


class PlainDense(tf.keras.layers.Layer):
    def __init__(self, units, activation=None, penalty=None):
        super().__init__()
        self.units = units
        self.activation = tf.keras.activations.get(activation)
        self.penalty = penalty

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer='glorot_uniform',
                                 regularizer=self.penalty, name='kernel')
        self.b = self.add_weight(shape=(self.units,), initializer='zeros', name='bias')

    def call(self, inputs):
        return self.activation(tf.matmul(inputs, self.w) + self.b)


x_train_scaled = x_train.astype('float32') / 255.0
x_test_scaled = x_test.astype('float32') / 255.0
model = tf.keras.models.Sequential([
    tf.keras.Input(shape=(32, 32, 3)),
    tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=SquaredWeights()),
    tf.keras.layers.MaxPooling2D((2, 2)),
    tf.keras.layers.Flatten(),
    PlainDense(128, activation='relu', penalty=SquaredWeights()),
    PlainDense(10, activation='softmax', penalty=SquaredWeights()),
])
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train_scaled, y_train, epochs=10, verbose=0)
test_loss, l2_test_acc = model.evaluate(x_test_scaled, y_test, verbose=0)
print('Test accuracy with L2 regularization:', l2_test_acc)
''',
    REPORT,
]

CNN_LAYERS = '''
def plain_cnn(penalty=None):
    return tf.keras.models.Sequential([
        tf.keras.Input(shape=(32, 32, 3)),
        tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=penalty),
        tf.keras.layers.MaxPooling2D((2, 2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=penalty),
        tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=penalty),
    ])
'''

# L1: add_loss in the layers (a custom convolution block and dense head), trained by fit.
# L2: a hand-written penalty in a traced GradientTape loop.
LOSSES_AND_LOOPS = [
    SCALED_CIFAR + CNN_LAYERS,
    '''
class L1Conv(tf.keras.layers.Layer):
    def __init__(self, filters):
        super().__init__()
        self.conv = tf.keras.layers.Conv2D(filters, (3, 3), activation='relu')

    def call(self, inputs):
        outputs = self.conv(inputs)
        self.add_loss(1e-4 * tf.reduce_sum(tf.abs(self.conv.kernel)))
        return outputs


class L1Dense(tf.keras.layers.Layer):
    def __init__(self, units, activation=None):
        super().__init__()
        self.dense = tf.keras.layers.Dense(units, activation=activation)

    def call(self, inputs):
        outputs = self.dense(inputs)
        self.add_loss(1e-4 * tf.reduce_sum(tf.abs(self.dense.kernel)))
        return outputs


model = tf.keras.models.Sequential([
    tf.keras.Input(shape=(32, 32, 3)),
    L1Conv(32),
    tf.keras.layers.MaxPooling2D((2, 2)),
    tf.keras.layers.Flatten(),
    L1Dense(128, activation='relu'),
    L1Dense(10, activation='softmax'),
])
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train, y_train, epochs=10, verbose=0)
test_loss, l1_test_acc = model.evaluate(x_test, y_test, verbose=0)
print('Test accuracy with L1 regularization:', l1_test_acc)
''',
    '''
model = plain_cnn()
optimizer = tf.keras.optimizers.Adam(learning_rate=1e-3)
cross_entropy = tf.keras.losses.SparseCategoricalCrossentropy()
batches = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=3).batch(32)


@tf.function
def train_step(images, labels):
    with tf.GradientTape() as tape:
        predictions = model(images, training=True)
        penalty = tf.add_n([tf.reduce_sum(tf.square(w)) for w in model.trainable_weights if len(w.shape) > 1])
        loss = cross_entropy(labels, predictions) + 1e-4 * penalty
    gradients = tape.gradient(loss, model.trainable_weights)
    optimizer.apply_gradients(zip(gradients, model.trainable_weights))
    return loss


for epoch in range(10):
    for images, labels in batches:
        train_step(images, labels)

predicted = np.argmax(model.predict(x_test, verbose=0), axis=1)
l2_test_acc = float(np.mean(predicted == y_test.ravel()))
print('Test accuracy with L2 regularization:', l2_test_acc)
''',
    REPORT,
]

# L1: an XLA-compiled training step adding model.losses. L2: a functional model on named (dict) inputs.
XLA_AND_NAMED = [
    SCALED_CIFAR + CNN_LAYERS,
    '''
model = plain_cnn(tf.keras.regularizers.L1(1e-4))
optimizer = tf.keras.optimizers.Adam()
loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()


@tf.function(jit_compile=True)
def xla_step(images, labels):
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True)) + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss


for epoch in range(10):
    order = np.random.permutation(len(x_train))
    for start in range(0, len(x_train) - 31, 32):
        batch = order[start:start + 32]
        xla_step(tf.constant(x_train[batch]), tf.constant(y_train[batch]))

model.compile(optimizer=optimizer, loss=loss_fn, metrics=['accuracy'])
test_loss, l1_test_acc = model.evaluate(x_test, y_test, verbose=0)
print('Test accuracy with L1 regularization:', l1_test_acc)
''',
    '''
pixels = tf.keras.Input(shape=(32, 32, 3), name='pixels')
x = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=tf.keras.regularizers.L2(1e-4))(pixels)
x = tf.keras.layers.MaxPooling2D((2, 2))(x)
x = tf.keras.layers.Flatten()(x)
x = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=tf.keras.regularizers.L2(1e-4))(x)
outputs = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=tf.keras.regularizers.L2(1e-4))(x)
model = tf.keras.Model(inputs={'pixels': pixels}, outputs=outputs)
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit({'pixels': x_train}, y_train, epochs=10, verbose=0)
test_loss, l2_test_acc = model.evaluate({'pixels': x_test}, y_test, verbose=0)
print('Test accuracy with L2 regularization:', l2_test_acc)
''',
    REPORT,
]

# L1: a subclassed model with regularized layers, trained by fit. L2: tf.nn.l2_loss in an eager loop.
SUBCLASSED_AND_EAGER = [
    SCALED_CIFAR + CNN_LAYERS,
    '''
class SmallCNN(tf.keras.Model):
    def __init__(self, penalty):
        super().__init__()
        self.conv = tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_regularizer=penalty)
        self.pool = tf.keras.layers.MaxPooling2D((2, 2))
        self.flatten = tf.keras.layers.Flatten()
        self.hidden = tf.keras.layers.Dense(128, activation='relu', kernel_regularizer=penalty)
        self.out = tf.keras.layers.Dense(10, activation='softmax', kernel_regularizer=penalty)

    def call(self, inputs):
        return self.out(self.hidden(self.flatten(self.pool(self.conv(inputs)))))


model = SmallCNN(tf.keras.regularizers.l1(1e-4))
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(x_train, y_train, epochs=10, verbose=0)
test_loss, l1_test_acc = model.evaluate(x_test, y_test, verbose=0)
print('Test accuracy with L1 regularization:', l1_test_acc)
''',
    '''
model = plain_cnn()
optimizer = tf.keras.optimizers.Adam()
cross_entropy = tf.keras.losses.SparseCategoricalCrossentropy()

for epoch in range(10):
    for images, labels in tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(5000, seed=epoch).batch(32):
        with tf.GradientTape() as tape:
            loss = cross_entropy(labels, model(images, training=True))
            loss += 2e-4 * tf.add_n([tf.nn.l2_loss(layer.kernel) for layer in model.layers if hasattr(layer, 'kernel')])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

model.compile(optimizer=optimizer, loss='sparse_categorical_crossentropy', metrics=['accuracy'])
test_loss, l2_test_acc = model.evaluate(x_test, y_test, verbose=0)
print('Test accuracy with L2 regularization:', l2_test_acc)
''',
    REPORT,
]

NOTEBOOKS = {
    "custom_objects": (CUSTOM_RECAP, CUSTOM_OBJECTS),
    "losses_and_loops": (None, LOSSES_AND_LOOPS),
    "xla_and_named_inputs": (None, XLA_AND_NAMED),
    "subclassed_and_eager": (None, SUBCLASSED_AND_EAGER),
}


def notebook(recap: str | None, practice: list[str]) -> nbformat.NotebookNode:
    """The solution with its recap cell (when ``recap`` is given) and its practice cells replaced."""
    nb = nbformat.read(SOLUTION, as_version=4)
    cells = nb.cells
    first_practice = next(i for i, c in enumerate(cells) if "cifar10.load_data" in c.source)
    if recap is not None:
        recap_cell = next(i for i, c in enumerate(cells) if "lib.stat.cmu.edu" in c.source)
        cells[recap_cell] = nbformat.v4.new_code_cell(recap.strip() + "\n")
    nb.cells = cells[:first_practice] + [nbformat.v4.new_code_cell(code.strip() + "\n") for code in practice]
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SubmissionResult]:
    work = tmp_path_factory.mktemp("mechanisms")
    grader = Grader(GradingConfig(grades_dir=work / "grades", profile="smoke", cache_dir=work / "cache"))
    folder = work / "notebooks"
    folder.mkdir()

    def grade(name: str) -> SubmissionResult:
        path = folder / f"{name}.ipynb"
        nbformat.write(notebook(*NOTEBOOKS[name]), path)
        return grader.grade(Submission(name, path))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(NOTEBOOKS, pool.map(grade, NOTEBOOKS)))


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_a_correct_notebook_reaching_keras_another_way_scores_full_marks_at_smoke(
    graded: dict[str, SubmissionResult], name: str
) -> None:
    result = graded[name]
    failed = {c.id: c.message for c in result.checks if not c.passed}
    assert result.score == result.max_score == 12, (result.status, result.reason, failed)
