from search_spaces._stage import Stage, log2


def suggest(trial, frozen):
    n_fc = trial.suggest_int("fc_layers", 1, 3)  # counting the output layer
    if n_fc == 1:  # no hidden layer: no width to ask for
        return {**frozen, "fc_widths": []}
    width = 2 ** trial.suggest_int("log2_fc_width", 6, 13)  # 64 to 8192
    # Hidden layers taper: each one half as wide as the one before.
    return {**frozen, "fc_widths": [max(16, width // 2 ** i) for i in range(n_fc - 1)]}


def params_of(config):
    widths = config["fc_widths"]
    if not widths:
        return {"fc_layers": 1}
    return {"fc_layers": len(widths) + 1, "log2_fc_width": log2(widths[0])}


def grid(frozen):
    # The reports' widths 64, 128, 256, 4096 and 8192 (GridSampler asks every combination).
    return {"fc_layers": [1, 2, 3], "log2_fc_width": [6, 7, 8, 12, 13]}


STAGE = Stage(
    name="stage2_fc",
    builds_on="stage1_layers",
    description="number of FC layers (1-3, output included) and the first hidden width",
    n_trials=20, epochs=10, suggest=suggest, grid=grid, params_of=params_of,
)
