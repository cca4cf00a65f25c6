"""Config: defaults are valid, every bad value is a one-line HpoError naming the field, JSON round trip."""

from __future__ import annotations

import json

import pytest

from hpo.training.config import (ACTIVATIONS, FIELDS, INITS, OPTIMIZERS, POOLS, SCHEDULERS, Config,
                        config_from_document, from_dict, load_json)
from hpo.errors import HpoError

SMALL = {"conv_layers": 2, "filters": [8, 16], "fc_widths": [32]}


def test_config_defaults_are_valid():
    c = Config()
    assert len(c.filters) == c.conv_layers


def test_config_unknown_key_lists_known_fields():
    with pytest.raises(HpoError) as e:
        from_dict({**SMALL, "filterz": [8, 16]})
    msg = str(e.value)
    assert "filterz" in msg
    assert "\n" not in msg
    for name in FIELDS:
        assert name in msg


def test_config_not_an_object_is_rejected():
    with pytest.raises(HpoError, match="JSON object"):
        from_dict([1, 2, 3])


# (field, bad value, a word from the allowed-values text)
BAD_VALUES = [
    ("conv_layers", -1, "0 to 8"),
    ("conv_layers", 9, "0 to 8"),
    ("conv_layers", 2.5, "integer"),
    ("conv_layers", True, "integer"),
    ("filters", [8, 0], "positive integers"),
    ("filters", [8], "one entry per conv layer"),
    ("filters", "8,16", "positive integers"),
    ("kernel_size", 0, ">= 1"),
    ("stride", 0, ">= 1"),
    ("padding", -1, ">= 0"),
    ("pool_size", 0, ">= 1"),
    ("activation", "relu6", "leaky_relu"),
    ("pool", "min", "avg"),
    ("conv_batchnorm", 1, "true or false"),
    ("conv_dropout", 1.0, "0 <= p < 1"),
    ("fc_dropout", -0.1, "0 <= p < 1"),
    ("fc_widths", [32, -4], "positive integers"),
    ("fc_batchnorm", "yes", "true or false"),
    ("init", "orthogonal", "kaiming"),
    ("optimizer", "lion", "adam"),
    ("lr", 0.0, "> 0"),
    ("lr", float("nan"), "finite"),
    ("lr", "0.01", "finite"),
    ("momentum", 1.0, "momentum < 1"),
    ("nesterov", "no", "true or false"),
    ("batch_size", 0, ">= 1"),
    ("epochs", 0, ">= 1"),
    ("l1", -1e-4, ">= 0"),
    ("weight_decay", float("inf"), "finite"),
    ("scheduler", "linear", "cosine"),
    ("step_size", 0, ">= 1"),
    ("milestones", [0], "positive integers"),
    ("gamma", 0.0, "0 < gamma <= 1"),
    ("gamma", 1.5, "0 < gamma <= 1"),
    ("early_stop_patience", -1, ">= 0"),
    ("flip", None, "true or false"),
    ("crop_padding", -2, ">= 0"),
    ("seed", -1, ">= 0"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_config_bad_value_names_field_and_allowed(field, value, allowed):
    with pytest.raises(HpoError) as e:
        from_dict({**SMALL, field: value})
    msg = str(e.value)
    assert repr(field) in msg
    assert allowed in msg
    assert "\n" not in msg


def test_config_nesterov_needs_sgd_with_momentum():
    from_dict({**SMALL, "nesterov": True})  # sgd, momentum 0.9: fine
    with pytest.raises(HpoError, match="'nesterov'"):
        from_dict({**SMALL, "nesterov": True, "optimizer": "adam"})
    with pytest.raises(HpoError, match="'nesterov'"):
        from_dict({**SMALL, "nesterov": True, "momentum": 0.0})


def test_config_choice_errors_list_every_choice():
    for field, choices in (("activation", ACTIVATIONS), ("pool", POOLS), ("optimizer", OPTIMIZERS),
                           ("scheduler", SCHEDULERS), ("init", INITS)):
        with pytest.raises(HpoError) as e:
            from_dict({**SMALL, field: "nope"})
        for choice in choices:
            assert choice in str(e.value)


def test_config_json_round_trip():
    c = from_dict({**SMALL, "activation": "gelu", "pool": "avg", "optimizer": "adam", "lr": 0.001,
                   "l1": 1e-5, "weight_decay": 1e-3, "scheduler": "multistep",
                   "milestones": [3, 7], "flip": True, "crop_padding": 4, "seed": 7})
    text = json.dumps(c.to_dict())
    back = from_dict(json.loads(text))
    assert back == c
    assert back.to_dict() == c.to_dict()


def test_config_json_number_types_are_coerced():
    c = from_dict({**SMALL, "lr": 1, "epochs": 3.0, "milestones": (2, 4)})
    assert isinstance(c.lr, float) and c.lr == 1.0
    assert isinstance(c.epochs, int) and c.epochs == 3
    assert c.milestones == [2, 4]
    with pytest.raises(HpoError, match="'epochs'"):
        from_dict({**SMALL, "epochs": 3.5})


def test_config_replace_validates():
    c = from_dict(SMALL)
    assert c.replace(epochs=4).epochs == 4
    with pytest.raises(HpoError, match="'epochs'"):
        c.replace(epochs=0)


def test_config_load_json_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HpoError, match="not valid JSON") as e:
        load_json(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(HpoError, match="cannot read"):
        load_json(tmp_path / "missing.json")


def test_config_from_document_accepts_export_and_names_source():
    c = config_from_document({"config": SMALL, "value": 0.5}, "best.json")
    assert c.filters == [8, 16]
    with pytest.raises(HpoError, match=r"^best\.json: unknown config field 'nope'"):
        config_from_document({**SMALL, "nope": 1}, "best.json")
