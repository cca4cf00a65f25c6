"""Creating and joining a stage study: its fixed settings, the frozen base config, sampler, pruner.

The first worker to reach a study writes its settings and the frozen config into the study's
user attributes; every later worker, from any machine, reads them back, so all trials of a study
share one base and one budget. Creation is race-free: Optuna's create_study(load_if_exists=True)
relies on the database's unique study name.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import optuna

from hpo.config import config_from_document, load_json
from hpo.data import check_dataset_name
from hpo.errors import HpoError
from hpo.notes import write_stage_note
from search_spaces import DEFAULTS, Stage, get_stage

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("accuracy", "accuracy,time", "accuracy,params")
METRIC_NAMES = {"accuracy": ["accuracy"], "accuracy,time": ["accuracy", "seconds"],
                "accuracy,params": ["accuracy", "parameters"]}


@dataclasses.dataclass
class Settings:
    """What every trial of one study shares. Stored in the study; flags must agree with it."""

    stage: str
    dataset: str = "cifar10-sample"
    epochs: int = 10
    train_size: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    n_trials: int = 30
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: str = "accuracy"


def settings_flags(args) -> dict[str, Any]:
    """The Settings fields a command line gave (None where it did not)."""
    names = ("dataset", "epochs", "train_size", "val_fraction", "seed", "n_trials", "sampler",
             "pruner", "objectives")
    return {name: getattr(args, name) for name in names}


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise HpoError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def directions(objectives: str) -> list[str]:
    check_choice("objectives", objectives, OBJECTIVES)
    return ["maximize"] + ["minimize"] * (objectives.count(",") > 0)


def resolve_settings(stage: Stage, stored: dict[str, Any], flags: dict[str, Any]) -> Settings:
    """Flags (None = not given) over stored study settings over the stage's defaults."""
    base = dataclasses.asdict(Settings(stage=stage.name, epochs=stage.epochs, n_trials=stage.n_trials))
    base.update({k: v for k, v in stored.items() if k in base})
    for key, value in flags.items():
        if value is None or key not in base:
            continue
        if key in stored and stored[key] != value and key not in ("n_trials",):
            raise HpoError(f"study was created with {key.replace('_', '-')}={stored[key]!r}; "
                           f"got {value!r} (start a new study to change it)")
        base[key] = value
    settings = Settings(**base)
    if not 0 < settings.val_fraction < 1:
        raise HpoError(f"--val-fraction {settings.val_fraction} is invalid; allowed: 0 < f < 1")
    check_choice("sampler", settings.sampler, SAMPLERS)
    check_choice("pruner", settings.pruner, PRUNERS)
    check_choice("objectives", settings.objectives, OBJECTIVES)
    return settings


def frozen_from_predecessor(storage, stage: Stage, after: str | None, from_file: str | None
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base config, where it came from): an export file, the predecessor's best trial, or defaults."""
    if from_file:
        doc = load_json(from_file)
        config = config_from_document(doc, from_file).to_dict()
        return config, {"file": from_file, "study": doc.get("study"), "trial": doc.get("trial")}
    predecessor = after or stage.builds_on
    if predecessor is None:
        return dict(DEFAULTS), {"defaults": True, "reason": f"{stage.name} builds on no stage"}
    names = {s.study_name for s in storage.get_all_studies()}
    if predecessor not in names:
        return dict(DEFAULTS), {"defaults": True, "reason": f"no study {predecessor!r}"}
    prev = optuna.load_study(study_name=predecessor, storage=storage)
    done = [t for t in prev.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "config" in t.user_attrs]
    if not done:
        return dict(DEFAULTS), {"defaults": True, "reason": f"{predecessor!r} has no finished trial"}
    best = max(done, key=lambda t: t.values[0])
    log.info("freezing everything %s does not search to %s trial %d (value %.4f)",
             stage.name, predecessor, best.number, best.values[0])
    return dict(best.user_attrs["config"]), {"study": predecessor, "trial": best.number,
                                             "value": best.values[0]}


def open_study(storage, study_name: str, space: str | None, flags: dict[str, Any],
               after: str | None = None, from_file: str | None = None
               ) -> tuple[optuna.Study, Stage, Settings, dict[str, Any]]:
    """Create or join a study; return it with its stage, settings and frozen base config."""
    objectives = flags.get("objectives") or "accuracy"
    existing = {s.study_name: s for s in storage.get_all_studies()}
    stored = dict(existing[study_name].user_attrs) if study_name in existing else {}
    stage_name = space or stored.get("stage") or study_name
    if stored.get("stage") and space and space != stored["stage"]:
        raise HpoError(f"study {study_name!r} searches stage {stored['stage']!r}, not {space!r}")
    stage = get_stage(stage_name)
    # Checked before create_study, so that a failing command leaves no empty study behind.
    for kind, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if flags.get(kind) is not None:
            check_choice(kind, flags[kind], valid)
    if flags.get("dataset") is not None:
        check_dataset_name(flags["dataset"])
    if from_file and "frozen_config" not in stored:
        config_from_document(load_json(from_file), from_file)
    if study_name in existing and "objectives" in stored:
        objectives = stored["objectives"]
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                directions=directions(objectives))
    stored = study.user_attrs
    settings = resolve_settings(stage, stored.get("settings", {}), {**flags, "objectives": objectives})
    if "frozen_config" in stored:
        frozen = stored["frozen_config"]
        if from_file or after:
            log.warning("study %r already has its frozen base (from %s); --from/--after ignored",
                        study_name, stored.get("frozen_from"))
    else:
        frozen, origin = frozen_from_predecessor(storage, stage, after, from_file)
        # Marker last: a worker that sees "stage" also sees everything written before it.
        study.set_user_attr("frozen_config", frozen)
        study.set_user_attr("frozen_from", origin)
        study.set_user_attr("settings", dataclasses.asdict(settings))
        study.set_user_attr("builds_on", after or stage.builds_on)
        study.set_user_attr("description", stage.description)
        study.set_user_attr("objectives", objectives)
        study.set_user_attr("stage", stage.name)
        with warnings.catch_warnings():  # experimental in Optuna, stable enough for labels
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES[objectives])  # axis labels in the dashboard
        write_stage_note(study, stage, origin, frozen)
        if origin.get("defaults"):
            # Expected for a first stage; worth a warning when a predecessor was meant to exist.
            level = logging.INFO if (after or stage.builds_on) is None else logging.WARNING
            log.log(level, "%s: %s; using the documented defaults (search_spaces/_stage.py "
                    "DEFAULTS)", study_name, origin["reason"])
    return study, stage, settings, frozen


def make_sampler(settings: Settings, stage: Stage, frozen: dict[str, Any], seed: int | None):
    name = settings.sampler
    if name == "tpe":
        # constant_liar: running trials count as bad, so concurrent workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(stage.grid(frozen), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.epochs)
    return optuna.pruners.NopPruner()


def grid_size(stage: Stage, frozen: dict[str, Any]) -> int:
    size = 1
    for values in stage.grid(frozen).values():
        size *= len(values)
    return size
