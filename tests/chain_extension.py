"""A user's stage that extends the built-in chain (tests/test_chain.py): weight decay, refined
after stage8."""

from search_spaces import Stage


def suggest(trial, frozen):
    return {**frozen, "weight_decay": trial.suggest_categorical("weight_decay", [0.0, 5e-4])}


def grid(frozen):
    return {"weight_decay": [0.0, 5e-4]}


STAGE = Stage(name="stage9_decay", builds_on="stage8_schedule",
              description="weight decay again, after the schedule", n_trials=2, epochs=1,
              suggest=suggest, grid=grid,
              params_of=lambda config: {"weight_decay": config["weight_decay"]})
