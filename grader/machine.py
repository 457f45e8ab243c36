"""Facts about the machine a run grades on, each found in one place: the cores this process may use,
the CPU's model, the platform and the versions of the libraries that decide a model's metrics.

The grader (the thread count of each kernel, grader/settings.py), the reference baselines and
calibration (reference/) and the benchmarks (benchmarks/) all read them from here. Only the
standard library is imported, so anything may import this module.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The libraries whose versions a reference baseline records: they decide the metrics it holds.
METRIC_LIBRARIES = ("tensorflow", "keras", "numpy")


def available_cores() -> int:
    """The CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = None
    try:
        v2 = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if v2 and v2[0] != "max":
            quota = int(v2[0]) / int(v2[1])
    except (OSError, ValueError, IndexError):
        try:
            cpu = Path("/sys/fs/cgroup/cpu")
            us = int((cpu / "cpu.cfs_quota_us").read_text())
            if us > 0:
                quota = us / int((cpu / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError, ZeroDivisionError):
            pass
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def threads_per_kernel(cores: int, workers: int) -> int:
    """Threads for each kernel so that ``workers`` kernels running at once share ``cores`` without oversubscribing."""
    return max(1, cores // max(1, workers))


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict[str, Any]:
    """The machine as a reference record keeps it (baselines, calibration)."""
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count()}


def versions() -> dict[str, str]:
    """The installed versions of ``METRIC_LIBRARIES``."""
    import importlib.metadata as md

    return {name: md.version(name) for name in METRIC_LIBRARIES}
