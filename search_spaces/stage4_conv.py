from search_spaces._stage import Stage

KERNELS, STRIDES, PADDINGS, POOLS = [2, 3, 4, 5, 7], [1, 2], [0, 1, 2], ["max", "avg"]


def suggest(trial, frozen):
    if frozen["conv_layers"] == 0:
        return dict(frozen)  # no conv layer: no geometry
    # A geometry that shrinks a map below 1x1 is refused before training and not counted
    # against the budget (hpo.runtime.runner); the chain leaves such points out of exhaustive stages.
    return {
        **frozen,
        "kernel_size": trial.suggest_int("kernel_size", 2, 7),
        "stride": trial.suggest_int("stride", 1, 2),
        "padding": trial.suggest_int("padding", 0, 2),
        "pool": trial.suggest_categorical("pool", POOLS),
        "pool_size": 2,
    }


def params_of(config):
    if config["pool_size"] != 2:
        return None
    return {k: config[k] for k in ("kernel_size", "stride", "padding", "pool")}


def grid(frozen):
    if frozen["conv_layers"] == 0:
        return {}
    return {"kernel_size": KERNELS, "stride": STRIDES, "padding": PADDINGS, "pool": POOLS}


STAGE = Stage(
    name="stage4_conv",
    builds_on="stage3_filters",
    description="kernel size, stride, padding and pooling type (impossible maps are refused)",
    n_trials=30, epochs=10, suggest=suggest, grid=grid, params_of=params_of,
)
