from search_spaces._stage import Stage, filters_for, log2


def suggest(trial, frozen):
    n = trial.suggest_int("conv_layers", 0, 4)
    return {
        **frozen,
        "conv_layers": n,
        "filters": filters_for(n, base=frozen["filters"][0] if frozen["filters"] else 32),
        # The reports' head: 3 FC layers without convolutions, else 2.
        "fc_widths": [512, 256] if n == 0 else [256],
        "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        "batch_size": 2 ** trial.suggest_int("log2_batch_size", 4, 7),  # 16 to 128
    }


def params_of(config):
    return {"conv_layers": config["conv_layers"], "lr": config["lr"],
            "log2_batch_size": log2(config["batch_size"])}


def grid(frozen):
    return {"conv_layers": [0, 1, 2, 3, 4], "lr": [0.1, 0.01, 0.001],
            "log2_batch_size": [4, 5, 6, 7]}


STAGE = Stage(
    name="stage1_layers",
    builds_on=None,
    description="number of conv layers (0-4, with the FC head), learning rate and batch size",
    n_trials=30, epochs=10, suggest=suggest, grid=grid, params_of=params_of,
)
