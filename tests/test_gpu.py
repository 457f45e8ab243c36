"""One kernel per GPU, memory growth on, and nothing at all on a machine without a GPU."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from grader.runner import gpu, sandbox
from grader.runner.process import _kernel_env


def test_without_a_gpu_a_slot_is_none_and_free(tmp_path: Path) -> None:
    with gpu.slot(tmp_path, gpus=[]) as index:
        assert index is None
    assert not list(tmp_path.iterdir())


def test_two_holders_get_different_gpus(tmp_path: Path) -> None:
    with gpu.slot(tmp_path, gpus=[0, 1]) as first, gpu.slot(tmp_path, gpus=[0, 1]) as second:
        assert {first, second} == {0, 1}


def test_a_third_holder_waits_until_a_gpu_is_released(tmp_path: Path) -> None:
    got: list[int | None] = []
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with gpu.slot(tmp_path, gpus=[0]):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    try:
        with pytest.raises(TimeoutError):
            with gpu.slot(tmp_path, gpus=[0], timeout=0.6):
                pass
    finally:
        release.set()
        holder.join()
    with gpu.slot(tmp_path, gpus=[0], timeout=5) as index:
        got.append(index)
    assert got == [0]


def test_visible_devices_limit_the_gpus_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu.indices() == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.indices() == []


def test_kernels_and_evaluators_grow_gpu_memory_and_a_kernel_sees_only_its_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = _kernel_env(tmp_path, seed=0, threads=1, gpu_index=1)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in _kernel_env(tmp_path, seed=0, threads=1, gpu_index=None)
    assert sandbox.runner_env(tmp_path)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_the_sandbox_binds_nvidia_devices_when_there_are_some(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not sandbox.probe().bubblewrap:
        pytest.skip("bubblewrap is not installed")
    monkeypatch.setattr(gpu, "device_nodes", lambda: ["/dev/nvidia0", "/dev/nvidiactl"])
    iso = sandbox.Isolation(job_dir=tmp_path)
    args = sandbox.wrap(["true"], iso)
    assert args[args.index("/dev/nvidia0") - 1] == "--dev-bind-try"
    assert "/dev/nvidiactl" in args
    monkeypatch.setattr(gpu, "device_nodes", lambda: [])
    assert "--dev-bind-try" not in sandbox.wrap(["true"], iso)
