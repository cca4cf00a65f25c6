"""How a trial ended, as a value: what the runner returns and the worker loop tells Optuna.
No torch here, so the loop and the storage path import without it (benchmarks/scale.py)."""

from __future__ import annotations

import dataclasses
import enum


class Ending(enum.Enum):
    COMPLETE = "complete"
    PRUNED = "pruned"  # by the pruner, or diverged: counts against the budget
    REJECTED = "rejected"  # impossible, or already trained in this study: FAIL, never trained,
    # not counted against the budget
    FAILED = "failed"  # could not run (out of memory): FAIL, not re-queued
    STOPPED = "stopped"  # a stop signal: re-queue with the checkpoint, then FAIL
    REAPED = "reaped"  # a stale-trial check failed it under us: its retry re-runs it


@dataclasses.dataclass
class Outcome:
    ending: Ending
    reason: str = ""
    values: list[float] | None = None
