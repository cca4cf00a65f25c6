from search_spaces._stage import Stage, filters_for, parse_pattern, pattern


def _choices(n_layers):
    return sorted({pattern(filters_for(n_layers, base, last))
                   for base in (16, 32, 64, 128) for last in (1, 2, 4)},
                  key=lambda p: parse_pattern(p))


def suggest(trial, frozen):
    choice = trial.suggest_categorical("filters", _choices(frozen["conv_layers"]))
    return {**frozen, "filters": parse_pattern(choice)}


def grid(frozen):
    # The reports tried 16-32-128, 32-64-256 and 64-128-512 on their 3-layer net.
    return {"filters": sorted({pattern(filters_for(frozen["conv_layers"], base, 4))
                               for base in (16, 32, 64)})}


STAGE = Stage(
    name="stage3_filters",
    builds_on="stage2_fc",
    description="filters per conv layer (base width and growth), layer count frozen",
    n_trials=12, epochs=10, suggest=suggest, grid=grid,
)
