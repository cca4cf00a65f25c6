"""Every knob at once, to compare a joint search with the staged one at equal budget."""

from search_spaces import (stage2_fc, stage3_filters, stage4_conv, stage5_regularization,
                           stage6_batchnorm, stage7_optimizer, stage8_schedule)
from search_spaces._stage import Stage

JOINT_L1 = [0.0, 1e-6, 1e-5, 1e-4]


def suggest(trial, frozen):
    n = trial.suggest_int("conv_layers", 0, 4)
    config = {**frozen, "conv_layers": n, "filters": [32] * n,  # widths: stage3 below
              "batch_size": 2 ** trial.suggest_int("log2_batch_size", 4, 7)}
    for stage in (stage3_filters, stage2_fc, stage4_conv):
        config = stage.suggest(trial, config)
    # One list of L1 strengths for every network of the space (a categorical's choices are
    # fixed per study): those stage5 finds trainable for its smaller networks.
    config = stage5_regularization.suggest(trial, config, l1=JOINT_L1)
    for stage in (stage6_batchnorm, stage7_optimizer, stage8_schedule):
        config = stage.suggest(trial, config)  # stage7 sets lr, per optimizer
    return config


def grid(frozen):
    # The configuration the reports settled on, stage by stage: one point to replay.
    return {"conv_layers": [3], "log2_batch_size": [5], "log2_filters_base": [6],
            "log2_last_factor": [2], "fc_layers": [2], "log2_fc_width": [8], "kernel_size": [4],
            "stride": [1], "padding": [1], "pool": ["max"], "l1": [0.0],
            "weight_decay": [1e-3], "dropout": [0.3], "dropout_where": ["fc"],
            "conv_batchnorm": [True], "fc_batchnorm": [True], "optimizer": ["adam"],
            "lr_adam": [0.001], "scheduler": ["none"], "flip": [False], "crop_padding": [0]}


STAGE = Stage(
    name="joint",
    builds_on=None,
    description="every knob of stages 1-8 searched together (compare staged with joint search)",
    n_trials=100, epochs=10, suggest=suggest, grid=grid,
)
