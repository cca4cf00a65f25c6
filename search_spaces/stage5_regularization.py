import math

from optuna.samplers import GridSampler

from search_spaces._stage import Stage

L1 = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
L2 = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
DROPOUT = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]
WHERE = ["conv", "fc", "both"]
IMAGE_SIZE = 32  # the L1 rule's yardstick: CIFAR's images


def trainable_l1(frozen):
    """The L1 strengths whose penalty at initialisation is at most the cross-entropy of a
    10-class guess (ln 10): beyond that the network spends its training shrinking weights.
    A larger network carries more weight mass, so it gets fewer strengths."""
    from hpo.training.geometry import is_possible, l1_mass_at_init

    if not is_possible(frozen, IMAGE_SIZE):
        return L1
    mass = l1_mass_at_init(frozen, IMAGE_SIZE)
    return [v for v in L1 if v * mass <= math.log(10)]


def l1_choices(trial, frozen):
    """A search is offered the trainable strengths; the reports' grid keeps all of its values."""
    sampler = getattr(getattr(trial, "study", None), "sampler", None)
    return L1 if isinstance(sampler, GridSampler) else trainable_l1(frozen)


def suggest(trial, frozen, l1=None):
    """``l1``: the strengths to offer (default: those trainable for ``frozen``'s network)."""
    rate = trial.suggest_categorical("dropout", DROPOUT)
    where = "fc"
    if rate > 0 and frozen["conv_layers"] > 0 and frozen["fc_widths"]:
        where = trial.suggest_categorical("dropout_where", WHERE)
    elif rate > 0 and frozen["conv_layers"] > 0:
        where = "conv"  # no hidden FC layer to drop out of
    return {
        **frozen,
        "l1": trial.suggest_categorical("l1", l1 or l1_choices(trial, frozen)),
        "weight_decay": trial.suggest_categorical("weight_decay", L2),
        "conv_dropout": rate if where in ("conv", "both") else 0.0,
        "fc_dropout": rate if where in ("fc", "both") else 0.0,
    }


def params_of(config):
    conv, fc = config["conv_dropout"], config["fc_dropout"]
    if conv and fc and conv != fc:
        return None
    params = {"dropout": conv or fc}
    if (conv or fc) and config["conv_layers"] > 0 and config["fc_widths"]:
        params["dropout_where"] = "both" if conv and fc else "conv" if conv else "fc"
    return {**params, "l1": config["l1"], "weight_decay": config["weight_decay"]}


def grid(frozen):
    space = {"l1": L1[1:], "weight_decay": L2[1:], "dropout": [0.1, 0.2, 0.3, 0.5, 0.7]}
    if frozen["conv_layers"] > 0 and frozen["fc_widths"]:
        space["dropout_where"] = WHERE  # asked only where both kinds of layer exist
    return space


STAGE = Stage(
    name="stage5_regularization",
    builds_on="stage4_conv",
    description="L1 strength, L2 (weight decay), dropout rate and where it goes",
    n_trials=30, epochs=15, suggest=suggest, grid=grid, params_of=params_of,
)
