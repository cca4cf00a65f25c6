"""The fault-injection chain's second stage: momentum (see __init__)."""

from search_spaces import Stage
from tests.fault_chain import momentum

STAGE = Stage(name="faults_momentum", builds_on="faults_lr", description="tiny net: momentum",
              n_trials=4, epochs=2, suggest=momentum,
              grid=lambda frozen: {"momentum": [0.5, 0.9]},
              params_of=lambda c: {"momentum": c["momentum"]})
