from search_spaces._stage import Stage

L1 = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
L2 = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
DROPOUT = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]
WHERE = ["conv", "fc", "both"]


def suggest(trial, frozen):
    rate = trial.suggest_categorical("dropout", DROPOUT)
    where = trial.suggest_categorical("dropout_where", WHERE)
    return {
        **frozen,
        "l1": trial.suggest_categorical("l1", L1),
        "weight_decay": trial.suggest_categorical("weight_decay", L2),
        "conv_dropout": rate if where in ("conv", "both") else 0.0,
        "fc_dropout": rate if where in ("fc", "both") else 0.0,
    }


def grid(frozen):
    return {"l1": L1[1:], "weight_decay": L2[1:], "dropout": [0.1, 0.2, 0.3, 0.5, 0.7],
            "dropout_where": WHERE}


STAGE = Stage(
    name="stage5_regularization",
    builds_on="stage4_conv",
    description="L1 strength, L2 (weight decay), dropout rate and where it goes",
    n_trials=30, epochs=15, suggest=suggest, grid=grid,
)
