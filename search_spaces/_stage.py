"""What a stage is: a declarative description that imports no torch.

A stage module defines ``STAGE = Stage(...)``. ``suggest(trial, frozen)`` returns the full config
as a plain dict: ``frozen`` (the best config of the stage it builds on) with the searched knobs
replaced. ``grid(frozen)`` returns the values the course reports tried, as a GridSampler space
whose keys are exactly the parameter names ``suggest`` asks the trial for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Suggest = Callable[[Any, dict], dict]
Grid = Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    builds_on: str | None
    description: str
    n_trials: int
    epochs: int
    suggest: Suggest
    grid: Grid


# Used when a stage has no finished predecessor: the reports' starting point (3 conv + 2 FC,
# SGD lr 0.01, batch 32), before any of the later stages had been tuned.
DEFAULTS: dict[str, Any] = {
    "conv_layers": 3, "filters": [32, 64, 128], "kernel_size": 3, "stride": 1, "padding": 1,
    "activation": "relu", "pool": "max", "pool_size": 2, "conv_batchnorm": False,
    "conv_dropout": 0.0, "fc_widths": [256], "fc_batchnorm": False, "fc_dropout": 0.0,
    "init": "kaiming", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False,
    "batch_size": 32, "epochs": 10, "l1": 0.0, "weight_decay": 0.0, "scheduler": "none",
    "step_size": 10, "milestones": [30, 60], "gamma": 0.1, "early_stop_patience": 0,
    "flip": False, "crop_padding": 0, "seed": 0,
}


def filters_for(n_layers: int, base: int = 32, last_factor: int = 2) -> list[int]:
    """Widths doubling per layer from base; the last layer grows by last_factor instead of 2.

    The reports' patterns 16-32-128, 32-64-256, 64-128-512 are base 16/32/64 with last_factor 4.
    """
    widths = [base * 2 ** i for i in range(n_layers)]
    if n_layers >= 2:
        widths[-1] = widths[-2] * last_factor
    return widths


def pattern(widths: list[int]) -> str:
    """Filters as one categorical value, e.g. "64-128-512" ("none" for zero conv layers)."""
    return "-".join(map(str, widths)) or "none"


def parse_pattern(value: str) -> list[int]:
    return [] if value == "none" else [int(w) for w in value.split("-")]
