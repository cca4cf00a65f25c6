from search_spaces._stage import Stage

SCHEDULERS = ["none", "step", "multistep", "cosine", "plateau"]


def suggest(trial, frozen):
    epochs = frozen["epochs"]
    return {
        **frozen,
        "scheduler": trial.suggest_categorical("scheduler", SCHEDULERS),
        # Step and milestones scale with the run length so short searches still decay.
        "step_size": max(1, epochs // 3),
        "milestones": [max(1, epochs // 2), max(2, 3 * epochs // 4)],
        "flip": trial.suggest_categorical("flip", [False, True]),
        "crop_padding": trial.suggest_categorical("crop_padding", [0, 4]),
    }


def grid(frozen):
    return {"scheduler": SCHEDULERS, "flip": [False, True], "crop_padding": [0, 4]}


STAGE = Stage(
    name="stage8_schedule",
    builds_on="stage7_optimizer",
    description="learning-rate scheduler and data augmentation (random flip, random crop)",
    n_trials=20, epochs=15, suggest=suggest, grid=grid,
)
