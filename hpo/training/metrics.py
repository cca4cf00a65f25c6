"""What a training run reports: each epoch's metrics, and the run's result."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only: these records load without torch
    from torch import nn


@dataclasses.dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    lr: float


@dataclasses.dataclass
class FitResult:
    status: str  # "completed", "early_stopped" or "diverged"
    reason: str
    history: list[EpochMetrics]
    params: int
    seconds: float
    model: nn.Module

    @property
    def best_val_acc(self) -> float:
        return max((m.val_acc for m in self.history), default=0.0)

    @property
    def final_val_acc(self) -> float:
        """The last epoch's validation accuracy: that of the weights in ``model``."""
        return self.history[-1].val_acc if self.history else 0.0

    def history_dicts(self) -> list[dict[str, float]]:
        return [dataclasses.asdict(m) for m in self.history]
