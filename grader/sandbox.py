"""How the runner and evaluator processes are isolated from the orchestrator.

Every child process gets a scrubbed environment (none of the orchestrator's variables) and its own
process group, killed as a whole on timeout. Stronger isolation (namespaces, cgroups) plugs in here.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def runner_env(job_dir: Path) -> dict[str, str]:
    """The environment of a runner or evaluator: only what Python, TensorFlow and Jupyter need."""
    home = job_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(_REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(home / ".jupyter-runtime"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_HOME": str(home / ".keras"),
        "MPLBACKEND": "Agg",
    }
    for passthrough in ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TMPDIR"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


def wrap(command: list[str], job_dir: Path) -> list[str]:
    """The command line that runs ``command`` isolated for ``job_dir``."""
    del job_dir
    return command
