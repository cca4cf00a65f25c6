"""The learning rate re-tuned where the network changes (``hpo-worker --chain --lr-window 4``).

A stage freezes the learning rate found for its predecessor's network, but a good learning rate
depends on the network: tuning practice re-tunes it, as a nuisance parameter, whenever the
architecture changes. With a window, each chain stage that changes the network also searches
``lr`` on a log scale from the inherited value divided by the factor to it multiplied by the
factor; its warm start keeps the inherited value. A stage that searches the learning rate
itself (stage1_layers, stage7_optimizer) is left as it is. No torch here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from search_spaces import Stage

# The stages that change the network: layers, FC head, filters, geometry, regularisation,
# batch norm (stage7's optimizer and stage8's schedule and augmentation do not).
CHANGES_NETWORK = ("stage1_layers", "stage2_fc", "stage3_filters", "stage4_conv",
                   "stage5_regularization", "stage6_batchnorm")
PARAM = "lr_window"  # the stage's own lr parameters are named lr or lr_<optimizer>


def searches_lr(stage: Stage, frozen: dict[str, Any], probes: int = 8) -> bool:
    """Whether the stage asks for a learning rate itself (a few random draws in memory)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(probes):
        trial = study.ask()
        stage.suggest(trial, dict(frozen))
        if any(name == "lr" or name.startswith("lr_") for name in trial.params):
            return True
    return False


def with_lr_window(stage: Stage, frozen: dict[str, Any], factor: float) -> Stage:
    """``stage`` that also searches lr within ``factor`` of ``frozen``'s, where it changes the
    network and does not search lr already; otherwise ``stage`` itself."""
    if not factor or stage.name not in CHANGES_NETWORK or searches_lr(stage, frozen):
        return stage
    low, high = frozen["lr"] / factor, frozen["lr"] * factor

    def suggest(trial, base):
        config = stage.suggest(trial, base)
        return {**config, "lr": trial.suggest_float(PARAM, low, high, log=True)}

    def params_of(config):
        params = stage.params_of(config) if stage.params_of else None
        inside = low <= config["lr"] <= high
        return {**params, PARAM: config["lr"]} if params is not None and inside else None

    return dataclasses.replace(stage, suggest=suggest, params_of=params_of,
                               description=f"{stage.description}; lr within x{factor:g} of "
                                           f"the inherited {frozen['lr']:g}")


def chain_stage(storage, study_name: str, stage: Stage, after: str | None,
                from_file: str | None, factor: float) -> tuple[Stage, tuple | None]:
    """(the stage a chain runs, the base a new study takes): the window is set around the
    frozen config's lr, so it is read (a study set up already) or found (a new one) first."""
    from hpo.store import study_records
    from hpo.studies.freezing import frozen_from_predecessor

    existing = {s.study_name: s for s in storage.get_all_studies()}
    if study_name in existing and "stage" in existing[study_name].user_attrs:
        frozen = study_records.read_one(storage, study_name, "frozen_config")
        return with_lr_window(stage, frozen, factor), None
    base = frozen_from_predecessor(storage, stage, after, from_file, chain_base=True)
    return with_lr_window(stage, base[0], factor), base
