"""Export a trial as JSON that ``hpo train`` re-trains to the same validation accuracy.

Like a nanoGPT checkpoint, the document stores everything needed to rebuild the run: the full
resolved config (frozen parts included), the data settings and the package versions.
"""

from __future__ import annotations

import datetime
import platform
from importlib import metadata
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.store import study_records
from hpo.errors import HpoError
from hpo.training.precision import from_record

FORMAT = "hpo-export/1"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("hpo", "torch", "torchvision", "optuna"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def load_existing_study(storage, name: str) -> optuna.Study:
    names = sorted(s.study_name for s in storage.get_all_studies())
    if name not in names:
        raise HpoError(f"unknown study {name!r}; studies in this storage: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials with a stored config, best accuracy first (ties: fewer seconds)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "config" in t.user_attrs]
    return sorted(done, key=lambda t: (-t.values[0], t.user_attrs.get("seconds", 0.0)))


def trial_document(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                   records: dict[str, Any]) -> dict[str, Any]:
    """``records``: the study's, from ``hpo.store.study_records.read``."""
    settings = records.get("settings", {})
    return {
        "format": FORMAT,
        "study": study.study_name,
        "stage": records.get("stage"),
        "trial": trial.number,
        "state": trial.state.name,
        "value": trial.values[0] if trial.values else None,
        "values": trial.values,
        "objectives": records.get("objectives", "accuracy"),
        "params": trial.params,
        "config": trial.user_attrs["config"],
        "history": trial.user_attrs.get("history", []),
        "parameter_count": trial.user_attrs.get("params"),
        "seconds": trial.user_attrs.get("seconds"),
        "device": trial.user_attrs.get("device"),
        "threads": trial.user_attrs.get("threads"),
        "dataset": settings.get("dataset", "cifar10-sample"),
        "train_size": settings.get("train_size"),
        "val_fraction": settings.get("val_fraction", 0.1),
        "split_seed": settings.get("split_seed", 0),
        "precision": from_record(settings),
        "bf16": from_record(settings) == "bf16",  # for hpo versions before "precision"
        "matmul_precision": settings.get("matmul_precision", "highest"),
        "deterministic": settings.get("deterministic", False),
        "frozen_from": records.get("frozen_from"),
        "versions": versions(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export(storage, study_name: str, top: int = 1, trial_number: int | None = None
           ) -> dict[str, Any]:
    """The best trial's document; with top > 1 a list under "trials"; or one chosen trial."""
    study = load_existing_study(storage, study_name)
    records = study_records.read(storage, study_name)
    if trial_number is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not trials:
            raise HpoError(f"study {study_name!r} has no trial {trial_number}; "
                           f"it has trials 0..{len(study.trials) - 1}")
        if "config" not in trials[0].user_attrs:
            raise HpoError(f"trial {trial_number} of {study_name!r} never built a config "
                           f"({trials[0].state.name}); pick a complete trial")
        return trial_document(study, trials[0], records)
    if top < 1:
        raise HpoError(f"--top {top} is invalid; allowed: 1 or more")
    ranked = ranked_trials(study)
    if not ranked:
        raise HpoError(f"study {study_name!r} has no complete trial to export yet")
    if top == 1:
        return trial_document(study, ranked[0], records)
    return {"format": FORMAT, "study": study_name,
            "trials": [trial_document(study, t, records) for t in ranked[:top]]}


def select_document(doc: Any, source: str) -> dict[str, Any]:
    """The trial document inside an export file (the first of a --top list)."""
    if not isinstance(doc, dict):
        raise HpoError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if "trials" in doc:
        if not isinstance(doc["trials"], list) or not doc["trials"]:
            raise HpoError(f"{source}: 'trials' must be a non-empty list")
        doc = doc["trials"][0]
    if "format" in doc and doc["format"] != FORMAT:
        raise HpoError(f"{source}: export format {doc['format']!r} is not supported; "
                       f"this version reads {FORMAT!r}")
    return doc
