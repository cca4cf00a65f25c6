"""Is there an NVIDIA GPU here that this PyTorch cannot use? Then a worker asked for ``auto``
devices must not quietly train on the CPU: a whole cluster could do so unnoticed (a driver
older than the wheel's CUDA, a CPU-only wheel in a GPU image).

Evidence of a GPU is what the driver leaves on every Linux machine it runs on: the
``/proc/driver/nvidia`` tree or ``/dev/nvidia0``. A GPU hidden on purpose
(CUDA_VISIBLE_DEVICES empty or -1, as a job without a GPU gets) counts as none.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from hpo.errors import HpoFailure

PROC = Path("/proc/driver/nvidia")
DEV = Path("/dev")


def nvidia_present(proc: Path | None = None, dev: Path | None = None) -> bool:
    proc, dev = proc or PROC, dev or DEV
    gpus = proc / "gpus"
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
    except OSError:
        pass
    return (dev / "nvidia0").exists()


def hidden_on_purpose(env: dict[str, str] | None = None) -> bool:
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    return visible is not None and visible.strip() in ("", "-1", "NoDevFiles")


def driver_version(proc: Path | None = None) -> str:
    """The kernel driver's version, e.g. '535.104.05', or 'unknown'."""
    proc = proc or PROC
    try:
        text = (proc / "version").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text) or \
        re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", text)
    return found.group(1) if found else "unknown"


def torch_build() -> str:
    import torch

    cuda = torch.version.cuda
    return f"torch {torch.__version__} " + (f"built for CUDA {cuda}" if cuda else
                                             "built without CUDA (a CPU-only wheel)")


def cuda_usable() -> tuple[bool, str]:
    """(torch can use CUDA, torch's own reason when it cannot, if it gave one)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    reasons = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    return usable, reasons[0] if reasons else ""


def check_gpus_usable(proc: Path | None = None, dev: Path | None = None) -> None:
    """HpoFailure (exit 1), one line, where NVIDIA GPUs are present and visible but torch
    cannot use them; nothing otherwise."""
    if hidden_on_purpose() or not nvidia_present(proc, dev):
        return
    usable, reason = cuda_usable()
    if usable:
        return
    raise HpoFailure(f"this machine has NVIDIA GPUs (driver {driver_version(proc)}) but "
                   f"{torch_build()} cannot use them"
                   + (f" ({reason.rstrip('.')})" if reason else "")
                   + "; install a torch wheel built for this driver's CUDA, or pass "
                     "--devices cpu to train on the CPU")


def cuda_device_count() -> int:
    """How many CUDA devices this process sees (0 without a usable GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
