"""Build the CNN from a Config alone, checking the geometry before any training."""

from __future__ import annotations

import torch
from torch import nn

from hpo.training.config import Config
from hpo.training.geometry import feature_map_sizes  # noqa: F401 (re-exported: tests, runner)

_ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}


def _init_weights(model: nn.Module, scheme: str, activation: str) -> None:
    if scheme == "default":
        return
    nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(config: Config, num_classes: int = 10, image_size: int = 32,
                in_channels: int = 3) -> nn.Sequential:
    """The network described by config. Deterministic given torch's RNG state."""
    sizes = feature_map_sizes(config, image_size)
    act = _ACTIVATIONS[config.activation]
    layers: list[nn.Module] = []
    channels = in_channels
    for width in config.filters:
        layers.append(nn.Conv2d(channels, width, config.kernel_size, config.stride, config.padding))
        if config.conv_batchnorm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(act())
        if config.pool == "max":
            layers.append(nn.MaxPool2d(config.pool_size))
        elif config.pool == "avg":
            layers.append(nn.AvgPool2d(config.pool_size))
        if config.conv_dropout > 0:
            layers.append(nn.Dropout2d(config.conv_dropout))
        channels = width
    side = sizes[-1] if sizes else image_size
    features = channels * side * side
    layers.append(nn.Flatten())
    for width in config.fc_widths:
        layers.append(nn.Linear(features, width))
        if config.fc_batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(act())
        if config.fc_dropout > 0:
            layers.append(nn.Dropout(config.fc_dropout))
        features = width
    layers.append(nn.Linear(features, num_classes))
    model = nn.Sequential(*layers)
    _init_weights(model, config.init, config.activation)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def penalised_weights(model: nn.Module) -> list[torch.Tensor]:
    """Weights that L1 applies to: conv and linear kernels, not biases or batch-norm scales."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
