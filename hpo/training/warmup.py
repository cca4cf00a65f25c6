"""One untimed pass over every batch shape a trial will see, before its clock starts.

On a GPU the first step of each new shape pays for cuDNN's algorithm search (cudnn.benchmark),
kernel loading and allocator growth: the train batch, the epoch's last partial batch and the
evaluation batch each cost that once. Charged to the first epoch, it would tilt the ``time``
objective against whichever trial happens to be first with a shape. The pass leaves the model
as it found it: evaluation mode (no dropout draws, no batch-norm statistics), no optimiser
step, gradients cleared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EVAL_BATCH = 1000  # hpo.training.data.DeviceData.eval_batches' default


def preload_torch() -> None:
    """Pay a one-time import cost now, not inside the first trial's wall time: torch.optim loads
    torch._dynamo on first use (about 3 s)."""
    import torch._dynamo  # noqa: F401


def batch_sizes(n: int, batch_size: int, least: int = 1) -> list[int]:
    """The distinct batch sizes of slicing n items into batches: full ones, then the rest
    (unless smaller than ``least``)."""
    sizes = [min(batch_size, n)] if n else []
    rest = n % batch_size if n > batch_size else 0
    if rest >= least and rest not in sizes:
        sizes.append(rest)
    return sizes


def warm_up(model: nn.Module, device: torch.device, image_shape: tuple[int, int, int],
            train_sizes: list[int], eval_sizes: list[int], bf16: bool) -> None:
    """Forward and backward at each of ``train_sizes``, forward alone at each of
    ``eval_sizes``, on zeros laid out as the real batches are (channels_last float32)."""
    was_training = model.training
    model.eval()

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros((n, *image_shape), device=device)
        return (x.contiguous(memory_format=torch.channels_last),
                torch.zeros(n, dtype=torch.int64, device=device))

    try:
        for n in train_sizes:
            x, y = batch(n)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            F.cross_entropy(out.float(), y).backward()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n in eval_sizes:
                x, _ = batch(n)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
