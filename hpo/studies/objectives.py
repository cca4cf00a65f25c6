"""What a study optimises: one small type that knows its directions, metric names, whether
Optuna's pruners apply, and how a finished training run becomes the trial's values."""

from __future__ import annotations

import dataclasses

from hpo.errors import HpoError


@dataclasses.dataclass(frozen=True)
class Objectives:
    name: str  # as typed on the command line and stored in the study
    metric_names: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def single(self) -> bool:
        """Optuna's pruners (should_prune) work on single-objective studies only."""
        return len(self.directions) == 1

    def values(self, val_acc: float, seconds: float, parameters: int) -> list[float]:
        measured = {"accuracy": val_acc, "seconds": seconds, "parameters": float(parameters)}
        return [measured[name] for name in self.metric_names]


ACCURACY = Objectives("accuracy", ("accuracy",), ("maximize",))
KNOWN = {o.name: o for o in (
    ACCURACY,
    Objectives("accuracy,time", ("accuracy", "seconds"), ("maximize", "minimize")),
    Objectives("accuracy,params", ("accuracy", "parameters"), ("maximize", "minimize")),
)}


def parse_objectives(name: str) -> Objectives:
    try:
        return KNOWN[name]
    except KeyError:
        raise HpoError(f"--objectives {name!r} is invalid; allowed: {', '.join(KNOWN)}") from None
