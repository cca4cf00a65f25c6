"""Snapshots of a training run in host memory, to resume it from.

``snapshot`` takes one after an epoch; ``restore`` loads one into a model and optimizer on the
device.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from hpo.training.metrics import EpochMetrics


def host_copy(obj: Any, non_blocking: bool = False) -> Any:
    """A deep copy of ``obj`` with every tensor copied (detached) into host memory.

    Containers keep their types (a MultiStepLR's Counter stays a Counter) and tensors appearing
    twice stay shared. Device tensors are never duplicated on the device. ``non_blocking``: a
    CUDA tensor goes to pinned memory asynchronously, in stream order (later kernels cannot
    change it first); its copy is complete once an event recorded afterwards has passed.
    """
    memo: dict[int, Any] = {}

    def collect(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            if id(o) not in memo:
                memo[id(o)] = o.detach().to("cpu", copy=True, non_blocking=non_blocking)
        elif isinstance(o, dict):
            for v in o.values():
                collect(v)
        elif isinstance(o, (list, tuple, set, frozenset)):
            for v in o:
                collect(v)

    collect(obj)
    return copy.deepcopy(obj, memo)  # the tensors come from memo: deepcopy never sees them


READY_KEY = "_copied"  # hpo.training.checkpoints.CheckpointStore.save waits on it, then drops it


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
             history: list[EpochMetrics], seconds: float, device: torch.device) -> dict[str, Any]:
    """Everything needed to resume after the last epoch in ``history``, in host memory and
    independent of the live (still training) weights.

    On CUDA the training thread only queues the copies (to pinned memory, in stream order) and
    goes on; the snapshot carries under READY_KEY a CUDA event whose ``synchronize()`` the
    checkpoint writer calls before reading the tensors. Elsewhere the copy is made here.
    """
    cuda = device.type == "cuda"
    state = host_copy({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": [dataclasses.asdict(m) for m in history], "seconds": seconds,
        "rng_cpu": torch.get_rng_state(),  # a CPU ByteTensor
        # also a CPU ByteTensor, whatever the device
        "rng_cuda": torch.cuda.get_rng_state(device) if cuda else None,
    }, non_blocking=cuda)
    if cuda:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        state[READY_KEY] = event
    return state


def restore(resume: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler, device: torch.device) -> tuple[list[EpochMetrics], float]:
    """Load a snapshot() (as read back by hpo.training.checkpoints, on the CPU) into a model and optimizer
    already on ``device``; returns (history, seconds so far).

    Model and optimizer state go to wherever the parameters live: load_state_dict copies into the
    parameters, and Optimizer.load_state_dict casts each state tensor to its parameter's device
    and floating dtype (its "step" stays put unless capturable/fused, as torch wants). The RNG
    states stay CPU ByteTensors, the only thing torch.(cuda.)set_rng_state accepts.
    """
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    if scheduler is not None and resume.get("scheduler") is not None:
        scheduler.load_state_dict(resume["scheduler"])
    torch.set_rng_state(resume["rng_cpu"].cpu())
    if device.type == "cuda" and resume.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(resume["rng_cuda"].cpu(), device)
    return [EpochMetrics(**m) for m in resume["history"]], resume.get("seconds", 0.0)
