"""The knobs a protocol's sweeps may turn, and what each value does to a configuration.

A knob is a config field (``lr``, ``kernel_size``, ``weight_decay``...: the value is set as is)
or one of the named knobs below, which change several fields together the way the course
reports did (``conv_layers`` also sets the filters and the FC head). ``set`` takes an object of
config fields, for a run that changes several at once (Adam with its own lr and batch size).
No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hpo.training.config import FIELDS
from hpo.errors import HpoError
from search_spaces._stage import filters_for, filters_params, parse_pattern

Apply = Callable[[dict[str, Any], Any], dict[str, Any]]
UNTUNABLE = ("epochs", "seed")  # the run's settings, the same for every run of a protocol


def _conv_layers(config, n):
    # The reports' head: 3 FC layers (two hidden) without convolutions, else 2 (stage1_layers).
    base = config["filters"][0] if config["filters"] else 32
    return {**config, "conv_layers": n, "filters": filters_for(n, base=base),
            "fc_widths": [512, 256] if n == 0 else [256]}


def _fc_layers(config, n):
    # Output layer included: 1 = no hidden layer, 2 = one of 256, 3 = 512 then 256.
    return {**config, "fc_widths": {1: [], 2: [256], 3: [512, 256]}[n]}


def _filters(config, pattern):
    # A three-layer pattern names a base and the last layer's growth (16-32-128: base 16, x4),
    # so it applies to however many conv layers the best so far has (stage3_filters does too).
    params = filters_params(parse_pattern(pattern))
    base = 2 ** params["log2_filters_base"]
    growth = 2 ** params.get("log2_last_factor", 1)
    return {**config, "filters": filters_for(config["conv_layers"], base, growth)}


def _batchnorm(config, where):
    return {**config, "conv_batchnorm": where in ("conv", "both"),
            "fc_batchnorm": where in ("fc", "both")}


def _augmentation(config, kind):
    return {**config, "flip": kind != "none", "crop_padding": 4 if kind == "flip+crop" else 0}


def _scheduler(config, name):
    # Step and milestones scale with the run length, so short runs still decay (stage8_schedule).
    epochs = config["epochs"]
    changed = {**config, "scheduler": name}
    if name == "step":
        changed["step_size"] = max(1, epochs // 3)
    if name == "multistep":
        changed["milestones"] = [max(1, epochs // 2), max(2, 3 * epochs // 4)]
    return changed


def _set(config, fields):
    return {**config, **fields}


def _is_pattern(value) -> bool:
    try:
        widths = parse_pattern(value)
    except (ValueError, AttributeError):
        return False
    params = filters_params(widths) if widths else None
    if params is None:
        return False
    growth = 2 ** params.get("log2_last_factor", 1)
    return widths == filters_for(len(widths), 2 ** params["log2_filters_base"], growth)


# name: (apply, whether a value is valid, what is valid)
NAMED: dict[str, tuple[Apply, Callable[[Any], bool], str]] = {
    "conv_layers": (_conv_layers, lambda v: v in range(0, 9) and not isinstance(v, bool),
                    "an integer 0 to 8"),
    "fc_layers": (_fc_layers, lambda v: v in (1, 2, 3) and not isinstance(v, bool), "1, 2 or 3"),
    "filters": (_filters, _is_pattern,
                "a pattern of powers of two such as \"32-64-256\" (base, doubling, last growth)"),
    "batchnorm": (_batchnorm, lambda v: v in ("none", "conv", "fc", "both"),
                  "none, conv, fc or both"),
    "augmentation": (_augmentation, lambda v: v in ("none", "flip", "flip+crop"),
                     "none, flip or flip+crop"),
    "scheduler": (_scheduler, lambda v: v in ("none", "step", "multistep", "cosine", "plateau"),
                  "none, step, multistep, cosine or plateau"),
    "set": (_set, lambda v: isinstance(v, dict) and bool(v), "an object of config fields"),
}


def known() -> list[str]:
    return list(NAMED) + [f for f in FIELDS if f not in NAMED and f not in UNTUNABLE]


def check_knob(knob: str) -> None:
    if knob not in NAMED and (knob not in FIELDS or knob in UNTUNABLE):
        raise HpoError(f"unknown knob {knob!r}; known: {', '.join(known())}")


def apply(config: dict[str, Any], knob: str, value: Any) -> dict[str, Any]:
    """``config`` with the knob turned to ``value``; HpoError naming a value it does not take
    (a config field's value is checked with the whole config, by hpo.training.config)."""
    check_knob(knob)
    if knob in NAMED:
        turn, valid, allowed = NAMED[knob]
        if not valid(value):
            raise HpoError(f"knob {knob!r} value {value!r} is invalid; allowed: {allowed}")
        if knob == "set":
            bad = [k for k in value if k not in FIELDS or k in UNTUNABLE]
            if bad:
                raise HpoError(f"knob 'set' value {value!r}: unknown config field {bad[0]!r}")
        return turn(config, value)
    return {**config, knob: value}


def label(knobs: dict[str, Any]) -> str:
    """A run's name from the values its sweep turned, e.g. ``conv_layers=2 lr=0.1``."""
    parts = []
    for knob, value in knobs.items():
        items = value.items() if knob == "set" else [(knob, value)]
        parts += [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in items]
    return " ".join(parts)
