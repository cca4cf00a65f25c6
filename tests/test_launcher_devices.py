"""Which GPU and how many CPU threads each launcher child gets, and the worker that sees NVIDIA
GPUs its torch cannot use. No GPU needed: CUDA's device count, the driver's /proc tree and the
child processes are stood in for."""

from __future__ import annotations

import signal

import pytest
import torch

from hpo.training import cuda_check
from hpo.runtime import launcher
from hpo.errors import HpoError


class FakeChild:
    started: list[dict] = []

    def __init__(self, cmd, env, start_new_session):
        self.cmd, self.env, self.pid = cmd, env, 1000 + len(FakeChild.started)
        FakeChild.started.append(env)

    def wait(self, timeout=None):
        return 0

    def poll(self):
        return 0


@pytest.fixture
def children(monkeypatch):
    """supervise() with its children recorded, not started, and no signal handlers changed."""
    FakeChild.started = []
    monkeypatch.setattr(launcher.subprocess, "Popen", FakeChild)
    monkeypatch.setattr(launcher.signal, "signal", lambda *a: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cuda_check, "nvidia_present", lambda *a: False)
    return FakeChild.started


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(launcher, "_cuda_count", lambda: count)


@pytest.mark.parametrize("inherited, expected", [
    ("4,5", ["4", "4", "5", "5"]),
    (" 4, 5 ", ["4", "4", "5", "5"]),
    ("GPU-8c1a2b3c-aaaa-bbbb-cccc-0123456789ab,MIG-GPU-1f2e/1/0",
     ["GPU-8c1a2b3c-aaaa-bbbb-cccc-0123456789ab"] * 2 + ["MIG-GPU-1f2e/1/0"] * 2),
])
def test_launcher_children_index_into_an_inherited_cuda_visible_devices(
        children, monkeypatch, inherited, expected):
    # Defect: with CUDA_VISIBLE_DEVICES=4,5 the children got 0,0,1,1: someone else's GPUs.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", inherited)
    _gpus(monkeypatch, 2)  # torch sees the two it was given, as 0 and 1
    slots = launcher.plan_slots("auto", 2)
    assert launcher.supervise(slots, ["--study", "s"]) == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for env in children] == expected


def test_launcher_without_an_inherited_list_pins_by_index(children, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _gpus(monkeypatch, 2)
    launcher.supervise(launcher.plan_slots("cuda:1,cuda:0", 1), [])
    assert [env["CUDA_VISIBLE_DEVICES"] for env in children] == ["1", "0"]


def test_launcher_gpu_slots_get_their_share_of_cpu_threads(children, monkeypatch):
    # Defect: only CPU slots had OMP_NUM_THREADS; a GPU child took every core for itself.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    _gpus(monkeypatch, 2)
    monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: set(range(8)))
    launcher.supervise(launcher.plan_slots("auto", 2), [])
    assert [env["OMP_NUM_THREADS"] for env in children] == ["2"] * 4


def test_launcher_shares_the_threads_it_was_given_not_the_machines(children, monkeypatch):
    # The sbatch script exports OMP_NUM_THREADS (the task's cores): the slots divide it.
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: set(range(64)))
    launcher.supervise(launcher.plan_slots("cpu", 3), [])
    assert [env["OMP_NUM_THREADS"] for env in children] == ["2"] * 3
    assert all("CUDA_VISIBLE_DEVICES" not in env or env["CUDA_VISIBLE_DEVICES"] ==
               launcher.os.environ.get("CUDA_VISIBLE_DEVICES") for env in children)


def test_visible_device_refuses_an_index_outside_the_inherited_list():
    with pytest.raises(HpoError, match="GPU 2 is not among CUDA_VISIBLE_DEVICES='4,5'"):
        launcher.visible_device("2", "4,5")


@pytest.fixture
def driver_tree(tmp_path, monkeypatch):
    """A /proc/driver/nvidia with one GPU and a driver version, and a torch without CUDA."""
    proc = tmp_path / "nvidia"
    (proc / "gpus" / "0000:3b:00.0").mkdir(parents=True)
    (proc / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n"
        "GCC version:  gcc version 9.4.0 (Ubuntu 9.4.0-1ubuntu1~20.04.2)\n")
    monkeypatch.setattr(cuda_check, "PROC", proc)
    monkeypatch.setattr(cuda_check, "DEV", tmp_path / "dev")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def is_available():
        import warnings

        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old "
                      "(found version 11040).\nPlease update your GPU driver.")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return proc


@pytest.mark.parametrize("devices", ["auto", "cuda:0"])
def test_worker_that_sees_gpus_torch_cannot_use_fails_with_one_line(driver_tree, devices,
                                                                    capsys):
    # Defect: it fell back to the CPU with one INFO line; a cluster could train on CPUs unseen.
    from hpo.runtime.worker import main

    code = main(["--study", "stage1_layers", "--storage", "sqlite:///never.db",
                 "--devices", devices])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "driver 470.256.02" in err and f"torch {torch.__version__}" in err
    assert "driver on your system is too old" in err and "--devices cpu" in err


def test_worker_asked_for_the_cpu_is_not_refused(driver_tree):
    assert [(s.device, s.visible_devices) for s in launcher.plan_slots("cpu", 1)] == \
        [("cpu", None)]


def test_gpus_hidden_on_purpose_are_not_an_error(driver_tree, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert [s.device for s in launcher.plan_slots("auto", 1)] == ["cpu"]


def test_no_nvidia_driver_means_the_cpu_without_complaint(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_check, "PROC", tmp_path / "none")
    monkeypatch.setattr(cuda_check, "DEV", tmp_path / "none")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cuda_check.check_gpus_usable()
    assert [s.device for s in launcher.plan_slots("auto", 1)] == ["cpu"]


def test_hpo_train_refuses_auto_on_unusable_gpus_too(driver_tree):
    from hpo.training.train import resolve_device

    with pytest.raises(HpoError, match="driver 470.256.02"):
        resolve_device("auto")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
     "(dvs-builder@U16-I3-B03-4-3)  Thu Jan 16 2025\n", "570.86.15"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n",
     "535.104.05"),
    ("garbled\n", "unknown"),
])
def test_driver_version_is_read_from_the_kernel_module_line(tmp_path, text, version):
    (tmp_path / "version").write_text(text)
    assert cuda_check.driver_version(tmp_path) == version
