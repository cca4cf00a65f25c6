"""The fault-injection chain's third stage: FC dropout (see __init__)."""

from search_spaces import Stage
from tests.fault_chain import dropout

STAGE = Stage(name="faults_dropout", builds_on="faults_momentum",
              description="tiny net: FC dropout", n_trials=4, epochs=2, suggest=dropout,
              grid=lambda frozen: {"fc_dropout": [0.0, 0.3]},
              params_of=lambda c: {"fc_dropout": c["fc_dropout"]})
