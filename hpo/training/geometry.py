"""What a config's network looks like, computed without building it (no torch): feature-map
sizes, for refusing impossible geometries before training, and the L1-penalised weight mass at
initialisation, for keeping the search away from L1 strengths a network of that size cannot
train with."""

from __future__ import annotations

import math
from typing import Any

from hpo.errors import HpoError


def _get(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, dict) else getattr(config, name)


def feature_map_sizes(config: Any, image_size: int = 32) -> list[int]:
    """Spatial size after each conv block: out = floor((N + 2P - K) / S) + 1, then pooling.

    ``config`` is a Config or a config dict. Raises HpoError naming the layer where the map
    would shrink below 1x1.
    """
    kernel, stride, padding = (_get(config, k) for k in ("kernel_size", "stride", "padding"))
    pool, pool_size = _get(config, "pool"), _get(config, "pool_size")
    sizes = []
    n = image_size
    for layer in range(_get(config, "conv_layers")):
        n = (n + 2 * padding - kernel) // stride + 1
        if n < 1:
            raise HpoError(
                f"impossible geometry: conv layer {layer + 1} (kernel {kernel}, stride {stride}, "
                f"padding {padding}) shrinks the {sizes[-1] if sizes else image_size}px map "
                "below 1x1")
        if pool != "none":
            pooled = n // pool_size
            if pooled < 1:
                raise HpoError(
                    f"impossible geometry: {pool}-pool {pool_size} after conv layer {layer + 1} "
                    f"shrinks the {n}px map below 1x1")
            n = pooled
        sizes.append(n)
    return sizes


def is_possible(config: Any, image_size: int = 32) -> bool:
    try:
        feature_map_sizes(config, image_size)
    except HpoError:
        return False
    return True


def layer_shapes(config: Any, image_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10) -> list[tuple[int, int]]:
    """(fan-in, outputs) of every conv and linear kernel, in order (hpo.training.model.build_model)."""
    sizes = feature_map_sizes(config, image_size)
    kernel = _get(config, "kernel_size")
    shapes, channels = [], in_channels
    for width in _get(config, "filters"):
        shapes.append((channels * kernel * kernel, width))
        channels = width
    side = sizes[-1] if sizes else image_size
    features = channels * side * side
    for width in [*_get(config, "fc_widths"), num_classes]:
        shapes.append((features, width))
        features = width
    return shapes


def l1_mass_at_init(config: Any, image_size: int = 32) -> float:
    """Expected sum of |w| over the L1-penalised kernels at Kaiming-normal initialisation:
    each weight has standard deviation sqrt(2 / fan_in), so E|w| = sqrt(2 / fan_in) sqrt(2 / pi)."""
    return sum(fan_in * out * math.sqrt(2 / fan_in) * math.sqrt(2 / math.pi)
               for fan_in, out in layer_shapes(config, image_size))
