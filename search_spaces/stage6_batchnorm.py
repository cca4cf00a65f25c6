from search_spaces._stage import Stage


def suggest(trial, frozen):
    return {
        **frozen,
        "conv_batchnorm": trial.suggest_categorical("conv_batchnorm", [False, True]),
        "fc_batchnorm": trial.suggest_categorical("fc_batchnorm", [False, True]),
    }


def grid(frozen):
    return {"conv_batchnorm": [False, True], "fc_batchnorm": [False, True]}


STAGE = Stage(
    name="stage6_batchnorm",
    builds_on="stage5_regularization",
    description="batch norm on the conv layers and on the FC layers",
    n_trials=4, epochs=10, suggest=suggest, grid=grid,
)
