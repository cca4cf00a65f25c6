"""Which number format trials train in: a study setting, resolved once when the study (or chain)
is created and stored as the concrete choice, so that every worker and ``hpo train`` run the
same arithmetic whatever machine they are on.

- ``fp32``: float32 everywhere, convolutions included (hpo.training.train.configure_backend turns cuDNN's
  TF32 off as well as matmul's unless --matmul-precision asks for it).
- ``bf16``: bfloat16 autocast for the forward pass; weights, gradients, optimiser state,
  normalisation statistics, the loss and evaluation sums stay float32 (hpo.training.train.fit).
- ``auto``: bf16 where the device computes it natively (a CUDA GPU with bf16 units, a CPU with
  AVX512-BF16 or AMX), else fp32.

No torch at import: hpo.studies.chain and hpo.studies.study import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.errors import HpoError

PRECISIONS = ("auto", "fp32", "bf16")
CONCRETE = ("fp32", "bf16")
DEFAULT = "auto"


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise HpoError(f"--precision {value!r} is invalid; allowed: {', '.join(PRECISIONS)}")
    return value


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_native() -> bool:
    """True where this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX) that PyTorch's oneDNN
    kernels use; without it bf16 is emulated and slower than float32."""
    import torch

    # torch.cpu's probes (underscored, but stable since 2.1) read CPUID as torch's kernels do;
    # /proc/cpuinfo is the fallback where they are missing.
    probes = [getattr(torch.cpu, name, None) for name in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        try:
            return any(probe() for probe in probes)
        except RuntimeError:
            pass
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def native_bf16(device) -> tuple[bool, str]:
    """(does ``device`` compute bfloat16 natively, why) for the log line."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:  # emulated bf16 (pre-Ampere) is slower than float32: not native
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no including_emulation
            native = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return native, f"{name} {'has' if native else 'lacks'} native bf16"
    if device.type == "cpu":
        native = cpu_bf16_native()
        return native, f"this CPU {'has' if native else 'lacks'} AVX512-BF16/AMX"
    return False, f"{device.type} is not a device hpo picks bf16 for"


def resolve(choice: str | None, device) -> tuple[str, str]:
    """(fp32 or bf16, why): ``auto`` (or None) decided for ``device`` (None: this machine's
    first GPU, else its CPU), a concrete choice kept."""
    choice = check_precision(choice or DEFAULT)
    if choice != "auto":
        return choice, "as asked"
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    native, why = native_bf16(device)
    return ("bf16" if native else "fp32"), f"auto: {why}"


def from_record(record: dict[str, Any]) -> str:
    """The concrete precision a stored study or chain record names. Records from before the
    setting existed keep what they ran: their ``bf16`` flag, else float32."""
    stored = record.get("precision")
    if stored in CONCRETE:
        return stored
    return "bf16" if record.get("bf16") else "fp32"


def flag_value(args) -> str | None:
    """--precision as given on a command line, --bf16 being its old spelling; None if neither."""
    precision = getattr(args, "precision", None)
    if getattr(args, "bf16", False):
        if precision not in (None, "bf16"):
            raise HpoError(f"--bf16 contradicts --precision {precision}; give one of them")
        return "bf16"
    return precision
