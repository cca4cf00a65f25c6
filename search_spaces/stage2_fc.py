from search_spaces._stage import Stage

WIDTHS = [64, 128, 256, 512, 1024, 4096, 8192]


def suggest(trial, frozen):
    n_fc = trial.suggest_int("fc_layers", 1, 3)  # counting the output layer
    width = trial.suggest_categorical("fc_width", WIDTHS)
    # Hidden layers taper: each one half as wide as the one before.
    return {**frozen, "fc_widths": [max(16, width // 2 ** i) for i in range(n_fc - 1)]}


def grid(frozen):
    return {"fc_layers": [1, 2, 3], "fc_width": [64, 128, 256, 4096, 8192]}


STAGE = Stage(
    name="stage2_fc",
    builds_on="stage1_layers",
    description="number of FC layers (1-3, output included) and the first hidden width",
    n_trials=20, epochs=10, suggest=suggest, grid=grid,
)
