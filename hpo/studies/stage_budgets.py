"""What each stage costs as the worker will run it: under ``hpo-worker --chain`` and as a single
``--study`` run. Both rows come from the worker's own code (the chain's budgets and flags, then
``hpo.studies.settings.new_settings``), so ``hpo stages`` cannot disagree with what runs. No torch here.

Whether a stage is exhaustive (its whole space no larger than the budget: every point once)
depends on the base it freezes; the table uses the base each run starts from when nothing is
frozen yet (the chain's BASE, the stage defaults for a single study) on 32-pixel images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpo.studies import chain as chains
from search_spaces import DEFAULTS as STAGE_DEFAULTS
from search_spaces import Stage, get_stage

IMAGE_SIZE = 32  # the built-in datasets' images


@dataclasses.dataclass(frozen=True)
class Budget:
    trials: int
    epochs: int
    exhaustive: bool

    def __str__(self) -> str:
        return f"{self.trials} x {self.epochs}{'*' if self.exhaustive else ''}"


def _settings(stage: Stage, flags: dict[str, Any], frozen: dict[str, Any],
              default_n_trials: int | None) -> Budget:
    from hpo.studies.settings import new_settings

    # The precision does not change a budget; a concrete one keeps torch out of hpo stages.
    flags = {**flags, "precision": "fp32"}
    settings, _ = new_settings(stage, flags, frozen, default_n_trials, image_size=IMAGE_SIZE)
    return Budget(settings.n_trials, settings.epochs, settings.exhaustive)


def chain_budget(stage: Stage, flags: dict[str, Any] | None = None) -> Budget:
    """The stage's budget under ``hpo-worker --chain`` with these settings flags (none: defaults),
    computed as hpo.runtime.worker.run_chain asks hpo.studies.study for it."""
    record = chains.chain_settings(flags or {}, [stage])
    return _settings(stage, chains.stage_flags(record), chains.BASE,
                     chains.stage_budget(stage, record))


def study_budget(stage: Stage, flags: dict[str, Any] | None = None) -> Budget:
    """The stage's budget as ``hpo-worker --study STAGE`` (or ``hpo create-study``) sets it."""
    return _settings(stage, dict(flags or {}), dict(STAGE_DEFAULTS), None)


def in_chain(stage: Stage) -> bool:
    """Whether ``hpo-worker --chain`` can run the stage: it is the chain's first stage or builds
    on it through builds_on (``joint`` does not)."""
    first = chains.BUILT_IN[0]
    while stage.name != first:
        if stage.builds_on is None:
            return False
        stage = get_stage(stage.builds_on)
    return True


def table(stages: list[Stage]) -> str:
    """``hpo stages``: one line per stage, the chain's budget first, a single study's where it
    differs."""
    lines = [f"{'stage':<24}{'builds on':<24}{'chain':<10}{'--study':<10}description"]
    for s in stages:
        chain, single = (chain_budget(s) if in_chain(s) else None), study_budget(s)
        alone = "same" if single == chain else str(single)
        lines.append(f"{s.name:<24}{s.builds_on or '-':<24}{str(chain or '-'):<10}{alone:<10}"
                     f"{s.description}")
    lines += ["",
              "chain: trials x epochs per trial under hpo-worker --chain. --study: under",
              "hpo-worker --study STAGE, where that differs. *: every point of the stage's space",
              "once, as its space is no larger than the budget (measured on the base a run starts",
              "from; a different frozen base can change it). --n-trials and --epochs override both."]
    return "\n".join(lines)
