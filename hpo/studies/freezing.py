"""What a new stage study freezes: the best trial of the stage it builds on (its final best,
waiting while that stage still runs), an exported file, or the documented defaults."""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna

from hpo.errors import HpoError
from hpo.studies.chain import BASE as CHAIN_BASE
from hpo.training.config import config_from_document, load_json
from search_spaces import DEFAULTS, Stage

log = logging.getLogger(__name__)


def frozen_from_predecessor(storage, stage: Stage, after: str | None, from_file: str | None,
                            freeze_best_so_far: bool = False, chain_base: bool = False
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base config, where it came from): an export file, the predecessor's best trial, or
    defaults (a chain's own starting point, ``hpo.studies.chain.BASE``, where ``chain_base``)."""
    def defaults(reason: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if chain_base:
            return dict(CHAIN_BASE), {"defaults": True, "base": "chain", "reason": reason}
        return dict(DEFAULTS), {"defaults": True, "reason": reason}

    if from_file:
        doc = load_json(from_file)
        config = config_from_document(doc, from_file).to_dict()
        return config, {"file": from_file, "study": doc.get("study"), "trial": doc.get("trial")}
    predecessor = after or stage.builds_on
    if predecessor is None:
        return defaults(f"{stage.name} builds on no stage")
    names = {s.study_name for s in storage.get_all_studies()}
    if predecessor not in names:
        if after:
            raise HpoError(f"--after {after!r}: no such study; studies here: "
                           f"{', '.join(sorted(names)) or 'none'}")
        return defaults(f"no study {predecessor!r}")
    prev = optuna.load_study(study_name=predecessor, storage=storage)
    wait_for_predecessor(prev, stage.name, freeze_best_so_far)
    best = best_complete_trial(prev)
    if best is None:
        return defaults(f"{predecessor!r} has no finished trial")
    log.info("freezing everything %s does not search to %s trial %d (value %.4f)",
             stage.name, predecessor, best.number, best.values[0])
    return dict(best.user_attrs["config"]), {"study": predecessor, "trial": best.number,
                                             "value": best.values[0]}


PREDECESSOR_POLL = 5.0  # seconds between looks at a predecessor that still runs


def wait_for_predecessor(prev: optuna.Study, stage_name: str, freeze_best_so_far: bool) -> None:
    """A stage freezes its predecessor's final best: while the predecessor still has trials
    running or queued, wait for them (saying so), unless told to freeze its best so far."""
    active = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    said = False
    while True:
        unfinished = prev.get_trials(deepcopy=False, states=active)
        if not unfinished:
            return
        if freeze_best_so_far:
            log.warning("%s: freezing the best so far of %r although %d of its trials are still "
                        "running or queued (--freeze-best-so-far)", stage_name, prev.study_name,
                        len(unfinished))
            return
        if not said:
            log.warning("%s: waiting for %r to finish (%d trial(s) running or queued) so as to "
                        "freeze its final best; --freeze-best-so-far freezes its best now",
                        stage_name, prev.study_name, len(unfinished))
            said = True
        time.sleep(PREDECESSOR_POLL)


def best_complete_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial with a stored config and the highest first objective (ties: the
    earlier trial), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values and "config" in t.user_attrs]
    return max(done, key=lambda t: (t.values[0], -t.number)) if done else None
