"""The fault-injection chain's first stage: learning rate (see __init__)."""

from search_spaces import Stage
from tests.fault_chain import TINY_NET, lr

STAGE = Stage(name="faults_lr", builds_on=None, description="tiny net: learning rate",
              n_trials=4, epochs=2, suggest=lr, grid=lambda frozen: {"lr": [0.01, 0.1]},
              params_of=lambda c: {"lr": c["lr"]}
              if all(c.get(k) == v for k, v in TINY_NET.items()) else None)
