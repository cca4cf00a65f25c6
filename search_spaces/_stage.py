"""What a stage is: a declarative description that imports no torch.

A stage module defines ``STAGE = Stage(...)``. ``suggest(trial, frozen)`` returns the full config
as a plain dict: ``frozen`` (the best config of the stage it builds on) with the searched knobs
replaced. ``grid(frozen)`` returns the values the course reports tried, as a GridSampler space
whose keys are exactly the parameter names ``suggest`` asks the trial for. ``params_of(config)``
(optional) is the inverse of ``suggest``: the parameters under which it returns ``config``
unchanged, so a chain can start each stage with the configuration it inherited (the warm start).

Ordered knobs are asked as integers (a power of two as its exponent, ``log2_...``), so samplers
see their order; a parameter is asked only where it changes the network (no FC width without a
hidden FC layer), so no two points of a space train the same configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Suggest = Callable[[Any, dict], dict]
Grid = Callable[[dict], dict]
ParamsOf = Callable[[dict], "dict | None"]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    builds_on: str | None
    description: str
    n_trials: int
    epochs: int
    suggest: Suggest
    grid: Grid
    params_of: ParamsOf | None = None


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


def log2(value: int) -> int | None:
    """The exponent of a power of two, or None for any other number."""
    if isinstance(value, int) and value > 0 and value & (value - 1) == 0:
        return value.bit_length() - 1
    return None


def filters_params(widths: list[int]) -> dict[str, int] | None:
    """The (base, last-layer growth) exponents filters_for builds ``widths`` from, or None."""
    if not widths:
        return {}
    base = log2(widths[0])
    if base is None:
        return None
    if len(widths) == 1:
        return {"log2_filters_base": base}
    growth = log2(widths[-1] // widths[-2]) if widths[-1] % widths[-2] == 0 else None
    return None if growth is None else {"log2_filters_base": base, "log2_last_factor": growth}
