"""One typed, JSON-serialisable training configuration covering every knob the reports tuned.

Field names are also Optuna parameter names in the study database: flat snake_case, never renamed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from hpo.errors import HpoError

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid")
POOLS = ("max", "avg", "none")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
SCHEDULERS = ("none", "step", "multistep", "cosine", "plateau")
INITS = ("kaiming", "xavier", "default")


@dataclasses.dataclass
class Config:
    # Convolutional trunk: conv_layers blocks of conv -> [batchnorm] -> activation -> [pool] -> [dropout].
    conv_layers: int = 3
    filters: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    activation: str = "relu"
    pool: str = "max"
    pool_size: int = 2
    conv_batchnorm: bool = False
    conv_dropout: float = 0.0
    # Fully connected head: hidden widths; the output layer to the classes is always added.
    fc_widths: list[int] = dataclasses.field(default_factory=lambda: [256])
    fc_batchnorm: bool = False
    fc_dropout: float = 0.0
    init: str = "kaiming"
    # Optimisation.
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    batch_size: int = 32
    epochs: int = 10
    l1: float = 0.0
    weight_decay: float = 0.0
    scheduler: str = "none"
    step_size: int = 10
    milestones: list[int] = dataclasses.field(default_factory=lambda: [30, 60])
    gamma: float = 0.1
    early_stop_patience: int = 0  # epochs without validation improvement; 0 = never stop early
    # Augmentation, applied on the device to whole batches.
    flip: bool = False
    crop_padding: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _expect(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise HpoError(f"config field {field!r} = {value!r} is invalid; allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def validate(c: Config) -> None:
    """Check types and ranges; raise HpoError naming the first bad field and what is allowed."""
    for name in ("conv_layers", "kernel_size", "stride", "padding", "pool_size", "batch_size",
                 "epochs", "step_size", "early_stop_patience", "crop_padding", "seed"):
        _expect(_is_int(getattr(c, name)), name, getattr(c, name), "an integer")
    for name in ("conv_dropout", "fc_dropout", "lr", "momentum", "l1", "weight_decay", "gamma"):
        _expect(_is_number(getattr(c, name)), name, getattr(c, name), "a finite number")
    for name in ("conv_batchnorm", "fc_batchnorm", "nesterov", "flip"):
        _expect(isinstance(getattr(c, name), bool), name, getattr(c, name), "true or false")
    for name, choices in (("activation", ACTIVATIONS), ("pool", POOLS), ("optimizer", OPTIMIZERS),
                          ("scheduler", SCHEDULERS), ("init", INITS)):
        _expect(getattr(c, name) in choices, name, getattr(c, name), ", ".join(choices))
    for name in ("filters", "fc_widths", "milestones"):
        v = getattr(c, name)
        _expect(isinstance(v, list) and all(_is_int(x) and x > 0 for x in v), name, v,
                "a list of positive integers")
    _expect(0 <= c.conv_layers <= 8, "conv_layers", c.conv_layers, "0 to 8")
    _expect(len(c.filters) == c.conv_layers, "filters", c.filters,
            f"one entry per conv layer ({c.conv_layers})")
    _expect(c.kernel_size >= 1, "kernel_size", c.kernel_size, ">= 1")
    _expect(c.stride >= 1, "stride", c.stride, ">= 1")
    _expect(c.padding >= 0, "padding", c.padding, ">= 0")
    _expect(c.pool_size >= 1, "pool_size", c.pool_size, ">= 1")
    _expect(0 <= c.conv_dropout < 1, "conv_dropout", c.conv_dropout, "0 <= p < 1")
    _expect(0 <= c.fc_dropout < 1, "fc_dropout", c.fc_dropout, "0 <= p < 1")
    _expect(c.lr > 0, "lr", c.lr, "> 0")
    _expect(0 <= c.momentum < 1, "momentum", c.momentum, "0 <= momentum < 1")
    _expect(not c.nesterov or (c.optimizer == "sgd" and c.momentum > 0), "nesterov", c.nesterov,
            "true only with optimizer 'sgd' and momentum > 0")
    _expect(c.batch_size >= 1, "batch_size", c.batch_size, ">= 1")
    _expect(c.epochs >= 1, "epochs", c.epochs, ">= 1")
    _expect(c.l1 >= 0, "l1", c.l1, ">= 0")
    _expect(c.weight_decay >= 0, "weight_decay", c.weight_decay, ">= 0")
    _expect(c.step_size >= 1, "step_size", c.step_size, ">= 1")
    _expect(0 < c.gamma <= 1, "gamma", c.gamma, "0 < gamma <= 1")
    _expect(c.early_stop_patience >= 0, "early_stop_patience", c.early_stop_patience, ">= 0")
    _expect(c.crop_padding >= 0, "crop_padding", c.crop_padding, ">= 0 (0 disables random crop)")
    _expect(c.seed >= 0, "seed", c.seed, ">= 0")


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from a plain dict, rejecting unknown keys with the list of known ones."""
    if not isinstance(data, dict):
        raise HpoError(f"a config must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise HpoError(f"unknown config field {unknown[0]!r}; known fields: {', '.join(FIELDS)}")
    values = dict(data)
    # JSON has one number type; accept 1.0 for an int field and 1 for a float field.
    for name, value in values.items():
        if FIELDS[name].type == "float" and _is_int(value):
            values[name] = float(value)
        if FIELDS[name].type == "int" and isinstance(value, float) and value.is_integer():
            values[name] = int(value)
        if isinstance(value, tuple):
            values[name] = list(value)
    return Config(**values)


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file, turning a missing or malformed file into a one-line error."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise HpoError(f"cannot read {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise HpoError(f"{str(path)!r} is not a text JSON file (it holds binary data)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HpoError(f"{str(path)!r} is not valid JSON (line {e.lineno}: {e.msg})") from None


def config_from_document(doc: Any, source: str) -> Config:
    """Accept a bare config object or an export document that holds one under "config"."""
    if isinstance(doc, dict) and "config" in doc and isinstance(doc["config"], dict):
        doc = doc["config"]
    try:
        return from_dict(doc)
    except HpoError as e:
        raise HpoError(f"{source}: {e}") from None
