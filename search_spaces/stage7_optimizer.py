from search_spaces._stage import Stage

# Each optimizer gets its own learning-rate parameter, so TPE models them separately.
LR_RANGES = {
    "sgd": (1e-3, 0.3), "adam": (1e-4, 1e-2), "adamw": (1e-4, 1e-2),
    "rmsprop": (1e-5, 1e-2), "adagrad": (1e-3, 1e-1), "adadelta": (0.05, 2.0),
}


def suggest(trial, frozen):
    name = trial.suggest_categorical("optimizer", list(LR_RANGES))
    low, high = LR_RANGES[name]
    return {**frozen, "optimizer": name, "nesterov": False,
            "lr": trial.suggest_float(f"lr_{name}", low, high, log=True)}


def params_of(config):
    if config["nesterov"] or config["optimizer"] not in LR_RANGES:
        return None
    return {"optimizer": config["optimizer"], f"lr_{config['optimizer']}": config["lr"]}


def grid(frozen):
    # The reports' comparison: Adam lr 0.001 against SGD (momentum) lr 0.01.
    return {"optimizer": ["sgd", "adam"], "lr_sgd": [0.01], "lr_adam": [0.001]}


STAGE = Stage(
    name="stage7_optimizer",
    builds_on="stage6_batchnorm",
    description="SGD (momentum) vs Adam, AdamW, RMSprop, Adagrad, Adadelta, each with its own lr",
    n_trials=20, epochs=10, suggest=suggest, grid=grid, params_of=params_of,
)
