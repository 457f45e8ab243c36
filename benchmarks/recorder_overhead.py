"""What the kernel's recorder adds to a small fit: the recap's model, 100 epochs on Boston-sized data.

    .venv/bin/python benchmarks/recorder_overhead.py --rounds 3

Each round runs, in fresh interpreters, the same seeded fit (Dense(10) -> Dense(1) with an L1 kernel
penalty, 354 rows of 13 features, batch 32, validation data, as ``submissions/solution.ipynb``'s recap)
once plain and once with the recorder the grader installs in every kernel
(``grader.kernel.bootstrap._install_recorder``), alternating which goes first. A warm-up fit precedes
the timed one in each process, so TensorFlow's start-up and first tracing are left out. Printed: every
round's seconds, each side's median and the ratio recorded / plain.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIT = r"""
import os, sys, tempfile, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import keras
import tensorflow as tf
if sys.argv[1] == "recorded":
    from pathlib import Path
    from grader.kernel import bootstrap
    bootstrap._install_recorder(Path(tempfile.mkdtemp()))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(354, 13)), rng.normal(size=(354,))

def fit(epochs):
    keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([
        tf.keras.Input((13,)),
        tf.keras.layers.Dense(10, activation="relu"),
        tf.keras.layers.Dense(1, kernel_regularizer=tf.keras.regularizers.L1(1e-5)),
    ])
    model.compile(loss="mean_squared_error", optimizer="adam", metrics=["mean_squared_error"])
    started = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=32, validation_data=(x[:100], y[:100]), verbose=0)
    return time.perf_counter() - started

fit(2)
print(fit(100))
"""


def one(side: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FIT, side], cwd=ROOT, capture_output=True, text=True, check=True, timeout=900
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"plain": [], "recorded": []}
    for r in range(args.rounds):
        order = ("plain", "recorded") if r % 2 == 0 else ("recorded", "plain")
        for side in order:
            times[side].append(one(side))
            print(f"round {r + 1} {side:8s} {times[side][-1]:6.1f} s", flush=True)
    plain, recorded = statistics.median(times["plain"]), statistics.median(times["recorded"])
    print(f"median plain {plain:.1f} s, recorded {recorded:.1f} s: recorded / plain = {recorded / plain:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
