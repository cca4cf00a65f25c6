"""Every knob at once, to compare a joint search with the staged one at equal budget."""

from search_spaces import (stage2_fc, stage4_conv, stage5_regularization,
                           stage6_batchnorm, stage7_optimizer, stage8_schedule)
from search_spaces._stage import Stage, filters_for


def suggest(trial, frozen):
    n = trial.suggest_int("conv_layers", 0, 4)
    config = {**frozen, "conv_layers": n,
              "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128])}
    base = trial.suggest_categorical("filters_base", [16, 32, 64])
    growth = trial.suggest_categorical("filters_last_factor", [1, 2, 4])
    config["filters"] = filters_for(n, base, growth)
    for stage in (stage2_fc, stage4_conv, stage5_regularization, stage6_batchnorm,
                  stage7_optimizer, stage8_schedule):
        config = stage.suggest(trial, config)  # stage7 sets lr, per optimizer
    return config


def grid(frozen):
    # The configuration the reports settled on, stage by stage: one point to replay.
    return {"conv_layers": [3], "batch_size": [32], "filters_base": [64],
            "filters_last_factor": [4], "fc_layers": [2], "fc_width": [256], "kernel_size": [4],
            "stride": [1], "padding": [1], "pool": ["max"], "pool_size": [2], "l1": [0.0],
            "weight_decay": [1e-3], "dropout": [0.3], "dropout_where": ["fc"],
            "conv_batchnorm": [True], "fc_batchnorm": [True], "optimizer": ["adam"],
            "lr_adam": [0.001], "scheduler": ["none"], "flip": [False], "crop_padding": [0]}


STAGE = Stage(
    name="joint",
    builds_on=None,
    description="every knob of stages 1-8 searched together (compare staged with joint search)",
    n_trials=100, epochs=10, suggest=suggest, grid=grid,
)
