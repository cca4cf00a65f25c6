"""A chain: stages run one after another under one name, hands-free (``hpo-worker --chain``).

The chain's settings are stored once, in a study named after the chain that holds no trials
(its user attribute ``chain``); every worker started with the same command joins it, and one
started with other settings is refused. Stage ``S`` of chain ``C`` is the study ``C.S``; it
freezes the final best of the chain's previous stage, whose finish (budget spent, nothing
running or queued) every worker waits for before moving on. No torch here.
"""

from __future__ import annotations

import re
import time
from typing import Any

import optuna

from hpo.store import study_records
from hpo.errors import HpoError
from hpo.studies.objectives import parse_objectives
from hpo.studies.settings import SETTING_FLAGS, flag
from search_spaces import DEFAULTS as STAGE_DEFAULTS
from search_spaces import Stage, all_stages, get_stage

BUILT_IN = ("stage1_layers", "stage8_schedule")
DEFAULT_NAME = "chain"
SETUP_WAIT = 60.0
# Chain defaults, per stage: the budget (an exhaustive stage, one whose whole space is smaller,
# trains each point once instead) and, for the whole chain, epochs, sampler and pruner. The
# median pruner: at equal epochs on three seeds it stood level with or above Hyperband at 13 of
# 15 points measured and reached the last stage sooner (BENCHMARKS.md row 4d).
TRIALS = {"stage1_layers": 20, "stage2_fc": 17, "stage3_filters": 12, "stage4_conv": 20,
          "stage5_regularization": 20, "stage6_batchnorm": 4, "stage7_optimizer": 12,
          "stage8_schedule": 20}
DEFAULTS = {"epochs": 10, "sampler": "tpe", "pruner": "median", "deterministic": False}
# Where a chain's stage has nothing to freeze (its first stage, unless --from names a file), it
# starts from the documented defaults plus batch norm in the conv layers, a cosine schedule and
# random flips: after 100, 200 and 300 epochs that start was ahead of the plain defaults on all
# three seeds measured, and at the end of the budget ahead, level and 2 points behind
# (BENCHMARKS.md row 4b). Stages 6 and 8 still search those knobs.
BASE = {**STAGE_DEFAULTS, "conv_batchnorm": True, "scheduler": "cosine", "flip": True}
# What a chain's workers must agree on: every study setting (a stage's own budget aside, unless
# --n-trials gives every stage the same).
SHARED = SETTING_FLAGS
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise HpoError(f"--chain-name {name!r} is invalid; allowed: letters, digits, '_' and '-'")
    return name


def parse_chain(spec: str | None) -> list[Stage]:
    """The stages of ``--chain [FIRST..LAST]``, in order, following each stage's builds_on."""
    if spec in (None, "all"):
        first, last = BUILT_IN
    elif spec.count("..") == 1 and all(spec.split("..")):
        first, last = spec.split("..")
    else:
        raise HpoError(f"--chain {spec!r} is invalid; allowed: all, or FIRST..LAST of stages "
                       f"that build on each other, e.g. stage3_filters..stage8_schedule")
    known = ", ".join(all_stages())
    for name in (first, last):
        try:
            get_stage(name)
        except HpoError:
            raise HpoError(f"--chain {spec!r} is invalid: unknown stage {name!r}; known: "
                           f"{known}") from None
    path = [get_stage(last)]
    while path[-1].name != get_stage(first).name:
        before = path[-1].builds_on
        if before is None:
            if last in _ancestry(get_stage(first)):
                raise HpoError(f"--chain {spec!r} is invalid: {last} comes before {first}; "
                               f"allowed: {last}..{first}")
            along = " -> ".join(s.name for s in reversed(path))
            raise HpoError(f"--chain {spec!r} is invalid: {last} does not build on {first} "
                           f"(its chain: {along}); allowed: a range along builds_on")
        path.append(get_stage(before))
    return list(reversed(path))


def _ancestry(stage: Stage) -> list[str]:
    names = []
    while stage.builds_on is not None:
        names.append(stage.builds_on)
        stage = get_stage(stage.builds_on)
    return names


def study_name(chain: str, stage: Stage) -> str:
    return f"{chain}.{stage.name}"


def stage_budget(stage: Stage, settings: dict[str, Any]) -> int:
    return settings.get("n_trials") or TRIALS.get(stage.name, stage.n_trials)


def chain_settings(flags: dict[str, Any], stages: list[Stage]) -> dict[str, Any]:
    given = {k: flags.get(k) for k in SHARED}
    for key, value in DEFAULTS.items():
        if given.get(key) is None:
            given[key] = value
    # Stored only when on, so chains created before the setting existed still match.
    window = {"lr_window": flags["lr_window"]} if flags.get("lr_window") else {}
    return {"stages": [s.name for s in stages], **given, **window}


def open_chain(storage, name: str, stages: list[Stage], flags: dict[str, Any],
               device=None) -> dict[str, Any]:
    """Create the chain's record or join it; a worker whose chain differs is refused by name.
    The creator decides ``--precision auto`` for its ``device``, once, for every stage."""
    from hpo.training.precision import from_record, resolve

    wanted = chain_settings(flags, stages)
    try:
        # The stages' directions: the dashboard lists the record with them, not as MINIMIZE.
        directions = parse_objectives(wanted["objectives"] or "accuracy").directions
        record = optuna.create_study(study_name=name, storage=storage, directions=list(directions))
    except optuna.exceptions.DuplicatedStudyError:
        record = optuna.load_study(study_name=name, storage=storage)
    else:
        wanted["precision"] = resolve(wanted["precision"], device)[0]
        record.set_user_attr("description", f"chain {' -> '.join(wanted['stages'])}: "
                                            "its settings; the stages are the studies "
                                            f"{name}.<stage>")
        study_records.write(storage, name, "chain", wanted)
        # A short marker for `optuna studies`, last: joiners wait for the record above.
        record.set_user_attr("chain", f"{wanted['stages'][0]}..{wanted['stages'][-1]}")
        return wanted
    stored = _wait_for_record(storage, record)
    stored = {**stored, "precision": from_record(stored)}  # older chains: their bf16 flag
    for key, value in wanted.items():
        given = flags.get(key) if key in SHARED else value
        if key in SHARED and given in (None, "auto"):
            continue  # not given on this command line (or auto): the chain's value holds
        if stored.get(key) != value:
            shown = (lambda v: "..".join((v[0], v[-1])) if key == "stages" else v)
            option = "--chain" if key == "stages" else flag(key)
            if key == "lr_window" and stored.get(key) is None:
                stored = {**stored, key: "off"}
            raise HpoError(f"chain {name!r} was created with {option} {shown(stored.get(key))!r}; "
                           f"got {shown(value)!r} (use the same flags, or another --chain-name)")
    return stored


def _wait_for_record(storage, record: optuna.Study) -> dict[str, Any]:
    start = time.monotonic()
    while True:
        attrs = study_records.read(storage, record.study_name)
        if isinstance(attrs.get("chain"), dict):
            return attrs["chain"]
        if "stage" in attrs or time.monotonic() - start > SETUP_WAIT:
            raise HpoError(f"study {record.study_name!r} exists and is not a chain; choose "
                           "another --chain-name")
        time.sleep(0.5)


def stage_flags(chain: dict[str, Any]) -> dict[str, Any]:
    """A stage study's settings flags under the chain (its budget is passed apart)."""
    from hpo.training.precision import from_record

    return {**{k: chain.get(k) for k in SHARED if k != "n_trials"},
            "precision": from_record(chain)}
