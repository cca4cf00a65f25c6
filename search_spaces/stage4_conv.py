from search_spaces._stage import Stage

KERNELS, STRIDES, PADDINGS, POOLS = [2, 3, 4, 5, 7], [1, 2], [0, 1, 2], ["max", "avg"]


def suggest(trial, frozen):
    return {
        **frozen,
        "kernel_size": trial.suggest_categorical("kernel_size", KERNELS),
        "stride": trial.suggest_categorical("stride", STRIDES),
        "padding": trial.suggest_categorical("padding", PADDINGS),
        "pool": trial.suggest_categorical("pool", POOLS),
        "pool_size": trial.suggest_categorical("pool_size", [2]),
    }


def grid(frozen):
    return {"kernel_size": KERNELS, "stride": STRIDES, "padding": PADDINGS, "pool": POOLS,
            "pool_size": [2]}


STAGE = Stage(
    name="stage4_conv",
    builds_on="stage3_filters",
    description="kernel size, stride, padding, pooling type and size (impossible maps are pruned)",
    n_trials=30, epochs=10, suggest=suggest, grid=grid,
)
