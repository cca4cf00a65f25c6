from search_spaces._stage import Stage


def suggest(trial, frozen):
    # Each switch only where its layers exist.
    config = dict(frozen)
    if frozen["conv_layers"] > 0:
        config["conv_batchnorm"] = trial.suggest_categorical("conv_batchnorm", [False, True])
    if frozen["fc_widths"]:
        config["fc_batchnorm"] = trial.suggest_categorical("fc_batchnorm", [False, True])
    return config


def params_of(config):
    return {"conv_batchnorm": config["conv_batchnorm"], "fc_batchnorm": config["fc_batchnorm"]}


def grid(frozen):
    space = {}
    if frozen["conv_layers"] > 0:
        space["conv_batchnorm"] = [False, True]
    if frozen["fc_widths"]:
        space["fc_batchnorm"] = [False, True]
    return space


STAGE = Stage(
    name="stage6_batchnorm",
    builds_on="stage5_regularization",
    description="batch norm on the conv layers and on the FC layers",
    n_trials=4, epochs=10, suggest=suggest, grid=grid, params_of=params_of,
)
