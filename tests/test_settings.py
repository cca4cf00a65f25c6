"""Study settings are declared once (hpo.studies.settings.Settings): every program that takes them
offers the same flags with the same ranges, and a value that reaches the checks another way (a
file, a record, the API) is refused with the very words a command line gets."""

from __future__ import annotations

import argparse

import pytest

from hpo.errors import HpoError
from hpo.studies.settings import SETTING_FLAGS, Settings, check_flags, flag, flag_fields

BAD = {"epochs": "0", "train_size": "0", "val_fraction": "1.5", "seed": "-1", "n_trials": "-1",
       "sampler": "nope", "pruner": "sometimes", "objectives": "speed", "precision": "fp8",
       "matmul_precision": "lowest"}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from hpo.cli import build_parser as hpo_parser
    from hpo.runtime.worker import build_parser as worker_parser

    commands = hpo_parser()._subparsers._group_actions[0].choices  # argparse keeps them here
    return {"hpo-worker": worker_parser(), "create-study": commands["create-study"],
            "create-chain": commands["create-chain"], "train": commands["train"]}


def _settings_options(parser: argparse.ArgumentParser) -> set[str]:
    wanted = {flag(name) for name in SETTING_FLAGS} | {"--bf16"}
    return {o for action in parser._actions for o in action.option_strings} & wanted


def test_every_field_with_a_flag_is_a_flag_of_every_program_that_creates_a_study():
    assert set(BAD) | {"dataset", "deterministic"} == set(SETTING_FLAGS)
    assert {f.name for f in flag_fields()} <= {f.name for f in Settings.__dataclass_fields__.values()}
    for name, parser in _parsers().items():
        options = _settings_options(parser)
        if name == "train":  # re-trains one configuration: no budget, sampler or split
            assert options == {"--dataset", "--epochs", "--train-size", "--precision", "--bf16",
                               "--matmul-precision", "--deterministic"}
        else:
            assert options == {flag(n) for n in SETTING_FLAGS} | {"--bf16"}, name


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_gets_the_same_words_from_every_parser_and_from_the_checks(name, capsys):
    with pytest.raises(HpoError) as checked:
        check_flags({name: BAD[name]})
    said = {}
    for program, parser in _parsers().items():
        if flag(name) not in _settings_options(parser):
            continue
        with pytest.raises(SystemExit) as exit:
            parser.parse_args([flag(name), BAD[name]])
        assert exit.value.code == 2
        said[program] = capsys.readouterr().err.strip().split("error: ", 1)[1]
    assert said and set(said.values()) == {str(checked.value)}, said
    assert str(checked.value).startswith(f"{flag(name)} {BAD[name]!r} is invalid; allowed: ")


def test_values_inside_the_ranges_pass_the_checks():
    check_flags({"epochs": 1, "train_size": 1, "val_fraction": 0.5, "seed": 0, "n_trials": 0,
                 "sampler": "grid", "pruner": "none", "objectives": "accuracy,time",
                 "precision": "bf16", "matmul_precision": "high", "deterministic": True})
