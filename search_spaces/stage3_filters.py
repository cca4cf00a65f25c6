from search_spaces._stage import Stage, filters_for, filters_params


def suggest(trial, frozen):
    n = frozen["conv_layers"]
    if n == 0:
        return dict(frozen)  # no conv layer: nothing to widen
    base = 2 ** trial.suggest_int("log2_filters_base", 4, 7)  # 16 to 128
    # The last layer's growth over the one before: x1, x2 or x4 (only with two layers or more).
    last = 2 ** trial.suggest_int("log2_last_factor", 0, 2) if n >= 2 else 1
    return {**frozen, "filters": filters_for(n, base, last)}


def params_of(config):
    return filters_params(config["filters"])


def grid(frozen):
    # The reports tried 16-32-128, 32-64-256 and 64-128-512 on their 3-layer net.
    if frozen["conv_layers"] == 0:
        return {}
    if frozen["conv_layers"] == 1:
        return {"log2_filters_base": [4, 5, 6]}
    return {"log2_filters_base": [4, 5, 6], "log2_last_factor": [2]}


STAGE = Stage(
    name="stage3_filters",
    builds_on="stage2_fc",
    description="filters per conv layer (base width and growth), layer count frozen",
    n_trials=12, epochs=10, suggest=suggest, grid=grid, params_of=params_of,
)
