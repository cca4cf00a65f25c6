from search_spaces._stage import Stage, filters_for


def suggest(trial, frozen):
    n = trial.suggest_int("conv_layers", 0, 4)
    return {
        **frozen,
        "conv_layers": n,
        "filters": filters_for(n, base=frozen["filters"][0] if frozen["filters"] else 32),
        # The reports' head: 3 FC layers without convolutions, else 2.
        "fc_widths": [512, 256] if n == 0 else [256],
        "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
    }


def grid(frozen):
    return {"conv_layers": [0, 1, 2, 3, 4], "lr": [0.1, 0.01, 0.001], "batch_size": [16, 32, 64, 128]}


STAGE = Stage(
    name="stage1_layers",
    builds_on=None,
    description="number of conv layers (0-4, with the FC head), learning rate and batch size",
    n_trials=30, epochs=10, suggest=suggest, grid=grid,
)
