"""The environment of a runner or an evaluator: an allow-list, nothing else of the grading process's."""

from __future__ import annotations

import os
from pathlib import Path

from grader.runner import gpu
from grader.runner.sandbox import bubblewrap

# The only variables of the grading process a child (and the kernel) inherits: library and device
# settings. Not TMPDIR: the sandbox has its own /tmp, and the grader's may be hidden there.
PASSTHROUGH_ENV = ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def runner_env(job_dir: Path) -> dict[str, str]:
    """The environment of a runner or evaluator: only what Python, TensorFlow and Jupyter need."""
    home = job_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(bubblewrap._REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(home / ".jupyter-runtime"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_HOME": str(home / ".keras"),
        "MPLBACKEND": "Agg",
        **gpu.GROWTH_ENV,
    }
    for passthrough in PASSTHROUGH_ENV:
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env
