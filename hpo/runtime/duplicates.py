"""Finding another trial of the study with the same configuration, so no point trains twice."""

from __future__ import annotations

from typing import Any

import optuna


def already_trained(trial: optuna.Trial, config: dict[str, Any], queued: bool,
                    warm: bool = False) -> optuna.trial.FrozenTrial | None:
    """A trial of this study that trained, trains or will train exactly this config, or None.

    A sampler may propose a finished point again (its result is already in the study), and two
    workers asking at once may draw the same point. A trial the sampler just proposed gives way
    to any twin that is running or queued: whichever of two such twins checks second sees the
    other's parameters, so at most one trains (both may give way; the point stays untried). A
    queued trial (a retry, a warm start) gives way only to an earlier queued or running twin.
    The warm start (``warm``) never gives way to a pruned twin: the stage needs its value.
    """
    S = optuna.trial.TrialState
    trials = trial.study.get_trials(deepcopy=False)
    # A retry never gives way to the trials it retries: a stopped worker queues the retry
    # before it fails the original (hpo.runtime.loop), so the original may still be running.
    me = next((t for t in trials if t.number == trial.number), None)
    retried = set(me.system_attrs.get("retry_history", [])) if me else set()
    for other in trials:
        if other.number == trial.number or other.number in retried:
            continue
        if other.state in ((S.COMPLETE,) if warm else (S.COMPLETE, S.PRUNED)) \
                and other.user_attrs.get("config") == config:
            return other
        if queued and other.number > trial.number:
            continue
        if other.state == S.RUNNING and other.params == trial.params:
            return other
        # A queued trial's parameters: a retry's are its params; enqueue_trial keeps them in
        # the "fixed_params" system attribute until the trial runs (no public accessor;
        # tests/test_optuna_contract.py fails if that changes).
        if other.state == S.WAITING and trial.params == (
                other.params or other.system_attrs.get("fixed_params")):
            return other
    return None
