"""GPUs, when the machine has NVIDIA ones: one kernel per GPU at a time, memory grown on demand.

Without a GPU (the usual case) nothing here changes anything: ``indices()`` is empty, ``slot()``
yields ``None`` at once and the sandbox binds no device.

With GPUs, each notebook's execution (kernel and evaluator) holds one GPU's lock file under the
grades dir for its whole run, so that ``pytest grader/ -n N`` never puts two kernels on one GPU; the
kernel sees only that GPU (``CUDA_VISIBLE_DEVICES``) and TensorFlow allocates its memory as it needs
it (``TF_FORCE_GPU_ALLOW_GROWTH``) instead of taking the whole card at start-up. Workers beyond the
number of GPUs wait for a free one.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

# TensorFlow's switch for on-demand GPU memory, set for every kernel and evaluator.
GROWTH_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
_POLL_SECONDS = 0.5


def device_nodes() -> list[str]:
    """The NVIDIA device files a CUDA process needs: /dev/nvidia0.., nvidiactl, nvidia-uvm..."""
    return sorted(glob.glob("/dev/nvidia*"))


def indices() -> list[int]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every /dev/nvidiaN."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(v) for v in visible.split(",") if v.strip().isdigit()]
    found = [re.fullmatch(r"/dev/nvidia(\d+)", node) for node in device_nodes()]
    return sorted(int(m.group(1)) for m in found if m)


@contextlib.contextmanager
def slot(lock_dir: Path, gpus: list[int] | None = None, timeout: float | None = None) -> Iterator[int | None]:
    """Hold one GPU for the duration of the block and yield its index (``None`` without GPUs).

    Takes the first free GPU; when every one is held by another worker, waits for one to free up.
    """
    gpus = indices() if gpus is None else gpus
    if not gpus:
        yield None
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    while True:
        for index in gpus:
            fh = open(lock_dir / f".gpu{index}.lock", "a")  # noqa: SIM115 - held open while the lock is
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"no GPU came free within {timeout:.0f} s")
        time.sleep(_POLL_SECONDS)
