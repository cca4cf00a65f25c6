"""Model builder: a contract over the reports' whole grid, geometry checked before training."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from hpo.training.config import ACTIVATIONS, INITS, Config, from_dict
from hpo.errors import HpoError
from hpo.training.model import build_model, count_parameters, feature_map_sizes, penalised_weights

KERNELS, STRIDES, PADDINGS, POOLS = (2, 3, 4, 5, 7), (1, 2), (0, 1, 2), ("max", "avg", "none")
GEOMETRY = list(itertools.product((1, 2, 3, 4), KERNELS, STRIDES, PADDINGS, POOLS))


def small(**changes) -> Config:
    values = {"conv_layers": 2, "filters": [8, 16], "fc_widths": [32], **changes}
    return from_dict(values)


def expected_parameters(config: Config, num_classes: int = 10, image_size: int = 32,
                        in_channels: int = 3) -> int:
    """The count written out by hand: conv (C_in*K*K + 1)*C_out, linear (in + 1)*out, BN 2 per unit."""
    total, channels = 0, in_channels
    for width in config.filters:
        total += (channels * config.kernel_size ** 2 + 1) * width
        total += 2 * width if config.conv_batchnorm else 0
        channels = width
    sizes = feature_map_sizes(config, image_size)
    features = channels * (sizes[-1] if sizes else image_size) ** 2
    for width in config.fc_widths:
        total += (features + 1) * width + (2 * width if config.fc_batchnorm else 0)
        features = width
    return total + (features + 1) * num_classes


def observed_sizes(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Run the model; return its output and the spatial size entering each later conv and the head."""
    seen: list[int] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape[-1]))
             for m in convs[1:] + [m for m in model.modules() if isinstance(m, nn.Flatten)]]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def torch_rejects(config: Config) -> bool:
    """Whether plain torch layers, without the builder's check, fail on this geometry."""
    x = torch.zeros(1, 3, 32, 32)
    try:
        for width in config.filters:
            x = nn.Conv2d(x.shape[1], width, config.kernel_size, config.stride, config.padding)(x)
            if config.pool == "max":
                x = nn.MaxPool2d(config.pool_size)(x)
            elif config.pool == "avg":
                x = nn.AvgPool2d(config.pool_size)(x)
    except RuntimeError:
        return True
    return x.shape[-1] < 1


@pytest.mark.parametrize("layers,kernel,stride,padding,pool", GEOMETRY,
                         ids=[f"L{n}-k{k}-s{s}-p{p}-{pool}" for n, k, s, p, pool in GEOMETRY])
def test_model_geometry_contract(layers, kernel, stride, padding, pool):
    config = from_dict({"conv_layers": layers, "filters": [4] * layers, "fc_widths": [8],
                        "kernel_size": kernel, "stride": stride, "padding": padding, "pool": pool})
    try:
        predicted = feature_map_sizes(config)
    except HpoError as e:
        assert "impossible geometry" in str(e) and "\n" not in str(e)
        assert torch_rejects(config), "the builder rejects a geometry torch would accept"
        with pytest.raises(HpoError):
            build_model(config)
        return
    model = build_model(config)
    out, seen = observed_sizes(model, torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert seen == predicted
    assert count_parameters(model) == expected_parameters(config)


def test_model_geometry_grid_has_valid_and_invalid_cases():
    outcomes = set()
    for layers, kernel, stride, padding, pool in GEOMETRY:
        config = from_dict({"conv_layers": layers, "filters": [4] * layers, "kernel_size": kernel,
                            "stride": stride, "padding": padding, "pool": pool})
        try:
            feature_map_sizes(config)
            outcomes.add(True)
        except HpoError:
            outcomes.add(False)
    assert outcomes == {True, False}


def test_model_feature_map_formula_examples():
    # floor((32 + 2 - 4) / 1) + 1 = 31, max-pool 2 -> 15; then 14 -> 7; then 6 -> 3
    c = from_dict({"conv_layers": 3, "filters": [8, 8, 8], "kernel_size": 4, "stride": 1,
                   "padding": 1, "pool": "max"})
    assert feature_map_sizes(c) == [15, 7, 3]
    # floor((32 + 0 - 7) / 2) + 1 = 13 (no pool); then floor(6 / 2) + 1 = 4
    c = c.replace(conv_layers=2, filters=[8, 8], kernel_size=7, stride=2, padding=0, pool="none")
    assert feature_map_sizes(c) == [13, 4]
    assert feature_map_sizes(c, image_size=64) == [29, 12]


def test_model_impossible_geometry_names_the_layer():
    c = from_dict({"conv_layers": 4, "filters": [4] * 4, "kernel_size": 7, "stride": 2,
                   "padding": 0, "pool": "max"})
    with pytest.raises(HpoError, match=r"layer \d"):
        build_model(c)


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4])
def test_model_conv_layer_counts_with_fc_head(layers):
    # the reports: 0 conv layers -> 3 FC layers, else 2 FC layers
    fc = [64, 32] if layers == 0 else [32]
    config = from_dict({"conv_layers": layers, "filters": [8 * 2 ** i for i in range(layers)],
                        "fc_widths": fc})
    model = build_model(config)
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == layers
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == len(fc) + 1
    assert count_parameters(model) == expected_parameters(config)


FILTER_PATTERNS = [[16, 32, 128], [32, 64, 256], [64, 128, 512], [32, 64, 128, 256],
                   [128, 256, 512, 1024]]


@pytest.mark.parametrize("filters", FILTER_PATTERNS, ids=["-".join(map(str, f)) for f in FILTER_PATTERNS])
def test_model_filter_patterns(filters):
    config = from_dict({"conv_layers": len(filters), "filters": filters, "fc_widths": [16],
                        "kernel_size": 4, "padding": 1})
    model = build_model(config)
    out, seen = observed_sizes(model, torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert seen == feature_map_sizes(config)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == filters
    assert count_parameters(model) == expected_parameters(config)


@pytest.mark.parametrize("fc", [[128], [64, 256], [4096], [128, 64, 32]])
def test_model_fc_widths(fc):
    config = small(fc_widths=fc)
    model = build_model(config)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == fc + [10]
    assert count_parameters(model) == expected_parameters(config)


def test_model_num_classes_and_image_size():
    config = small()
    model = build_model(config, num_classes=100, image_size=24, in_channels=1)
    assert model(torch.zeros(2, 1, 24, 24)).shape == (2, 100)
    assert count_parameters(model) == expected_parameters(config, 100, 24, 1)


def test_model_batchnorm_and_dropout_layers():
    config = small(conv_batchnorm=True, fc_batchnorm=True, conv_dropout=0.3, fc_dropout=0.5)
    model = build_model(config)
    kinds = [type(m) for m in model]
    assert kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.BatchNorm1d) == 1
    assert kinds.count(nn.Dropout2d) == 2 and kinds.count(nn.Dropout) == 1
    assert count_parameters(model) == expected_parameters(config)
    plain = [type(m) for m in build_model(small())]
    assert nn.BatchNorm2d not in plain and nn.Dropout not in plain and nn.Dropout2d not in plain


def test_model_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_model(small(fc_dropout=0.5, conv_dropout=0.3))
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("init", INITS)
def test_model_activation_and_init_train_step(activation, init):
    torch.manual_seed(0)
    model = build_model(small(activation=activation, init=init, conv_batchnorm=True,
                              fc_batchnorm=True, conv_dropout=0.1, fc_dropout=0.1))
    assert sum(1 for m in model.modules() if m.__class__.__name__.lower().replace("_", "")
               == activation.replace("_", "")) == 3
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_model_init_schemes_differ_and_zero_biases():
    weights = {}
    for init in INITS:
        torch.manual_seed(0)
        model = build_model(small(init=init))
        weights[init] = model[0].weight.detach().clone()
        if init != "default":
            assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert not torch.equal(weights["kaiming"], weights["xavier"])
    assert not torch.equal(weights["kaiming"], weights["default"])


def test_model_is_deterministic_given_seed():
    torch.manual_seed(3)
    a = build_model(small())
    torch.manual_seed(3)
    b = build_model(small())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_model_penalised_weights_are_kernels_only():
    model = build_model(small(conv_batchnorm=True, fc_batchnorm=True))
    weights = penalised_weights(model)
    assert len(weights) == 2 + 2  # two convs, one hidden linear, the output linear
    assert all(w.dim() in (2, 4) for w in weights)
