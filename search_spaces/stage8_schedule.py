from search_spaces._stage import Stage

SCHEDULERS = ["none", "step", "multistep", "cosine", "plateau"]


def suggest(trial, frozen):
    epochs = frozen["epochs"]
    config = {**frozen, "scheduler": trial.suggest_categorical("scheduler", SCHEDULERS)}
    # Step and milestones scale with the run length so short searches still decay.
    if config["scheduler"] == "step":
        config["step_size"] = max(1, epochs // 3)
    if config["scheduler"] == "multistep":
        config["milestones"] = [max(1, epochs // 2), max(2, 3 * epochs // 4)]
    config["flip"] = trial.suggest_categorical("flip", [False, True])
    config["crop_padding"] = trial.suggest_categorical("crop_padding", [0, 4])
    return config


def params_of(config):
    return {k: config[k] for k in ("scheduler", "flip", "crop_padding")}


def grid(frozen):
    return {"scheduler": SCHEDULERS, "flip": [False, True], "crop_padding": [0, 4]}


STAGE = Stage(
    name="stage8_schedule",
    builds_on="stage7_optimizer",
    description="learning-rate scheduler and data augmentation (random flip, random crop)",
    n_trials=20, epochs=15, suggest=suggest, grid=grid, params_of=params_of,
)
