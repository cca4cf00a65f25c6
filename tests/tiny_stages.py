"""A small stage for process-level tests: a one-conv net searched over lr and batch size.

Loaded through HPO_STAGES=tests.tiny_stages, the way users add stages of their own.
"""

from search_spaces import Stage


def suggest(trial, frozen):
    return {**frozen, "conv_layers": 1, "filters": [8], "fc_widths": [16],
            "lr": trial.suggest_float("lr", 0.01, 0.1, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64])}


def grid(frozen):
    return {"lr": [0.01, 0.1], "batch_size": [32, 64]}


STAGE = Stage(name="tiny", builds_on=None, description="one conv layer; for tests",
              n_trials=4, epochs=2, suggest=suggest, grid=grid)
