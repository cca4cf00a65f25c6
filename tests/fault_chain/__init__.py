"""A three-stage chain of tiny networks for the fault-injection test (tests/test_faults.py,
benchmarks/faults.py): learning rate, then momentum, then FC dropout, each starting from the
configuration the one before settled on (its warm start). Loaded through HPO_STAGES
(``MODULES``); one module per stage, as the registry wants."""


TINY_NET = {"conv_layers": 1, "filters": [8], "fc_widths": [16]}


def lr(trial, frozen):
    return {**frozen, **TINY_NET, "lr": trial.suggest_float("lr", 0.005, 0.2, log=True)}


def momentum(trial, frozen):
    return {**frozen, "momentum": trial.suggest_float("momentum", 0.5, 0.95)}


def dropout(trial, frozen):
    return {**frozen, "fc_dropout": trial.suggest_float("fc_dropout", 0.0, 0.5)}


MODULES = ",".join(f"tests.fault_chain.{name}" for name in ("lr", "momentum", "dropout"))
CHAIN = "faults_lr..faults_dropout"
