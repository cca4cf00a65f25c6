"""Fit and evaluate one configuration. Knows nothing of Optuna: callers observe it per epoch."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpo.training.config import Config
from hpo.training.data import DeviceData, Split
from hpo.errors import HpoError
from hpo.training.metrics import EpochMetrics, FitResult
from hpo.training.model import build_model, count_parameters, penalised_weights
from hpo.training.snapshots import restore, snapshot


class Interrupted(Exception):
    """The stop event was set mid-run (a worker received SIGTERM/SIGINT)."""


# on_epoch(metrics, checkpoint) may raise to stop the run (a pruner does); checkpoint() returns
# everything needed to resume after that epoch, in host memory (see snapshot()).
EpochCallback = Callable[[EpochMetrics, Callable[[], dict[str, Any]]], None]

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values


def configure_backend(device: torch.device | str, matmul_precision: str = "highest",
                      deterministic: bool = False) -> None:
    """Process-wide backend settings for training on ``device``; callers (worker, hpo train) call
    it once before fit(), and before any CUDA work where ``deterministic``.

    ``matmul_precision`` is the float32 precision of matmuls and cuDNN convolutions alike:
    "highest" is true float32 (TF32 off for both: PyTorch leaves it on for convolutions),
    "high" allows TF32, "medium" bfloat16 in matmuls (TF32 in convolutions). On CUDA, cuDNN
    benchmarks its convolution algorithms once per input shape and keeps the fastest, unless
    ``deterministic``: then it uses only deterministic algorithms and cuBLAS a fixed workspace,
    so a re-train on the same GPU repeats the run exactly (slower convolutions).
    """
    if matmul_precision not in MATMUL_PRECISIONS:
        raise HpoError(f"unknown matmul precision {matmul_precision!r}; valid: "
                       f"{', '.join(MATMUL_PRECISIONS)}")
    if deterministic:  # read when cuBLAS makes its first handle: set before any CUDA matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = torch.device(device).type == "cuda" and not deterministic
    torch.set_float32_matmul_precision(matmul_precision)
    conv_tf32 = matmul_precision != "highest"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # torch >= 2.9's own switch; mixing it with the legacy allow_tf32 raises on reads
        conv.fp32_precision = "tf32" if conv_tf32 else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = conv_tf32


def conv_tf32_allowed() -> bool:
    """Whether cuDNN may run float32 convolutions in TF32 (as configure_backend left it)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def set_cpu_threads(threads: int) -> None:
    """Train on this many CPU threads (float reductions, hence results, depend on it)."""
    torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU; NVIDIA GPUs that
    this torch cannot use are an error (hpo.training.cuda_check) unless the CPU is asked for."""
    if name != "cpu":
        from hpo.training.cuda_check import check_gpus_usable

        check_gpus_usable()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HpoError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise HpoError(f"--device {name!r} is invalid; allowed: auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HpoError(f"device {name!r} requested but CUDA is not available here; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise HpoError(f"device {name!r} does not exist; this machine has "
                       f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    wd = config.weight_decay  # L2 goes through weight decay; L1 is added to the loss
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=config.lr, weight_decay=wd)
    return torch.optim.Adadelta(params, lr=config.lr, weight_decay=wd)


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer):
    s = config.scheduler
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    if s == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestones, config.gamma)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.gamma, patience=max(1, config.step_size // 5))
    return None


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, split: Split, bf16: bool = False
             ) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a split, in eval mode."""
    model.eval()
    loss = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.int64)
    for x, y in data.eval_batches(split):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    n = max(1, len(split))
    return loss.item() / n, correct.item() / n


def fit(config: Config, data: DeviceData, on_epoch: EpochCallback | None = None,
        resume: dict[str, Any] | None = None, bf16: bool = False,
        stop: threading.Event | None = None,
        between_batches: Callable[[], None] | None = None,
        on_model: Callable[[int], None] | None = None,
        warm_up: bool | None = None) -> FitResult:
    """Train config on data.train, validating on data.val after every epoch.

    Same seed and data on the CPU give the same metrics. A NaN/inf loss ends the run with status
    "diverged" rather than an exception. ``resume`` is a checkpoint from ``on_epoch``, with its
    tensors on the CPU (hpo.training.checkpoints.CheckpointStore.load reads it back so); restore() moves
    it to the device. Setting ``stop`` raises Interrupted at the next batch; ``between_batches``
    runs before every batch and may raise to end the run; ``on_model`` is told the model's
    parameter count before training starts. ``warm_up``: run each batch shape once before the
    clock starts (hpo.training.warmup; None: on CUDA, where the first step of a shape autotunes).
    Backend settings (configure_backend) are the caller's.
    """
    device = data.device
    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes, data.image_size, data.in_channels).to(device)
    model = model.to(memory_format=torch.channels_last)  # as the batches are (hpo.training.data)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer)
    l1_weights = penalised_weights(model) if config.l1 > 0 else []
    history: list[EpochMetrics] = []
    start_epoch, elapsed = 0, 0.0
    if resume is not None:
        history, elapsed = restore(resume, model, optimizer, scheduler, device)
        start_epoch = len(history)

    def checkpoint() -> dict[str, Any]:
        # A copy in host memory: state_dict() tensors alias the live weights, which keep training,
        # and a copy on the GPU would cost device memory and tie the checkpoint to the device.
        return snapshot(model, optimizer, scheduler, history, elapsed, device)

    params = count_parameters(model)
    if on_model is not None:
        on_model(params)
    if warm_up if warm_up is not None else device.type == "cuda":
        from hpo.training import warmup

        warmup.warm_up(model, device, tuple(data.train.x.shape[1:]),
                       warmup.batch_sizes(len(data.train), config.batch_size, least=2),
                       warmup.batch_sizes(len(data.val), warmup.EVAL_BATCH), bf16)
    status, reason = "completed", ""
    best, since_best = -1.0, 0
    for m in history:  # a resumed run counts the epochs without improvement before it
        best, since_best = (m.val_acc, 0) if m.val_acc > best else (best, since_best + 1)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for x, y in data.train_batches(config.batch_size, epoch, config.seed, config.flip,
                                       config.crop_padding):
            if stop is not None and stop.is_set():
                raise Interrupted()
            if between_batches is not None:
                between_batches()
            if len(y) < 2 and seen:  # a lone last sample would break batch norm; skip it
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            if l1_weights:
                loss = loss + config.l1 * sum(w.abs().sum() for w in l1_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            elapsed += time.perf_counter() - t0
            status, reason = "diverged", f"training loss became {train_loss} in epoch {epoch + 1}"
            break
        val_loss, val_acc = evaluate(model, data, data.val, bf16)
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        elif scheduler is not None:
            scheduler.step()
        elapsed += time.perf_counter() - t0
        metrics = EpochMetrics(epoch + 1, train_loss, correct.item() / seen, val_loss, val_acc,
                               time.perf_counter() - t0, lr)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, checkpoint)
        if val_acc > best:
            best, since_best = val_acc, 0
        else:
            since_best += 1
        if config.early_stop_patience and since_best >= config.early_stop_patience:
            status = "early_stopped"
            reason = f"no validation improvement for {since_best} epochs"
            break
    return FitResult(status, reason, history, params, elapsed, model)
